//! JSON as Go's `encoding/json` writes it, so documents ferry creates
//! (converted manifests and configs, OCI `index.json`) are byte for byte what
//! containers/image (skopeo, podman) creates from the same input.

use std::collections::BTreeMap;

use serde::Serialize;

/// `json.Marshal` of a value whose struct fields serialise in Go's field order: compact, Go's escapes.
pub fn to_vec<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let json = serde_json::to_string(value).expect("plain data always serialises");
    escape(&json).into_bytes()
}

/// Turns serde_json's compact output into Go 1.19 `json.Marshal`'s: `<`, `>`,
/// `&`, U+2028 and U+2029 escaped as `\u….`, and `\b` `\f` spelled `\u0008`
/// `\u000c`. (Those characters appear in the output only inside strings.)
pub fn escape(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let mut chars = json.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('b') => out.push_str("\\u0008"),
                Some('f') => out.push_str("\\u000c"),
                Some(n) => {
                    out.push('\\');
                    out.push(n);
                }
                None => out.push('\\'),
            },
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

/// A JSON string literal, as serde_json writes it (pass the document through [`escape`] for Go's escapes).
pub fn string(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialise")
}

/// A JSON object from sorted keys and raw values (Go marshals a map with sorted keys).
pub fn object(doc: &BTreeMap<&str, String>) -> String {
    let body: Vec<String> = doc
        .iter()
        .map(|(k, v)| format!("{}:{v}", string(k)))
        .collect();
    format!("{{{}}}", body.join(","))
}

/// Raw JSON as Go's `json.Marshal` re-emits a `json.RawMessage`: insignificant
/// whitespace removed, and `<`, `>`, `&`, U+2028, U+2029 escaped.
pub fn compact(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let (mut in_str, mut escaped) = (false, false);
    for ch in raw.chars() {
        if in_str {
            if escaped {
                escaped = false;
                out.push(ch);
                continue;
            }
            match ch {
                '\\' => {
                    escaped = true;
                    out.push(ch);
                }
                '"' => {
                    in_str = false;
                    out.push(ch);
                }
                '<' => out.push_str("\\u003c"),
                '>' => out.push_str("\\u003e"),
                '&' => out.push_str("\\u0026"),
                '\u{2028}' => out.push_str("\\u2028"),
                '\u{2029}' => out.push_str("\\u2029"),
                c => out.push(c),
            }
        } else {
            match ch {
                ' ' | '\t' | '\n' | '\r' => {}
                '"' => {
                    in_str = true;
                    out.push(ch);
                }
                c => out.push(c),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn escapes_as_go_does() {
        let v = serde_json::json!({"a": "<&>\u{8}\u{c}\u{2028}\\b\n"});
        assert_eq!(
            String::from_utf8(super::to_vec(&v)).unwrap(),
            r#"{"a":"\u003c\u0026\u003e\u0008\u000c\u2028\\b\n"}"#
        );
    }
}
