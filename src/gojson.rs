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

/// `json.MarshalIndent(v, "", "    ")` of a value whose struct fields serialise in Go's field order.
pub fn indent<T: Serialize + ?Sized>(value: &T) -> String {
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    value
        .serialize(&mut ser)
        .expect("plain data always serialises");
    escape(&String::from_utf8(out).expect("serde_json writes UTF-8"))
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

/// A time as Go's `time.Time` marshals after parsing RFC 3339 (trailing zeros of
/// the fraction dropped, a zero offset written `Z`); `None` when it does not
/// parse (the zone's digits are checked, and a `.` needs digits after it).
pub fn go_time(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| {
        b.get(r.clone())
            .is_some_and(|x| x.iter().all(u8::is_ascii_digit))
    };
    if b.len() < 20
        || !digits(0..4)
        || b[4] != b'-'
        || !digits(5..7)
        || b[7] != b'-'
        || !digits(8..10)
        || !(b[10] == b'T' || b[10] == b't')
        || !digits(11..13)
        || b[13] != b':'
        || !digits(14..16)
        || b[16] != b':'
        || !digits(17..19)
    {
        return None;
    }
    let mut i = 19;
    let mut frac = String::new();
    if b[i] == b'.' {
        i += 1;
        while i < b.len() && b[i].is_ascii_digit() {
            frac.push(b[i] as char);
            i += 1;
        }
        if frac.is_empty() {
            return None;
        }
        frac.truncate(9);
    }
    let zone = &s[i..];
    let zone = match zone {
        "Z" | "z" => "Z".to_string(),
        z if z.len() == 6
            && (z.starts_with('+') || z.starts_with('-'))
            && z.as_bytes()[3] == b':'
            && z[1..3].bytes().all(|c| c.is_ascii_digit())
            && z[4..6].bytes().all(|c| c.is_ascii_digit()) =>
        {
            if &z[1..] == "00:00" {
                "Z".to_string()
            } else {
                z.to_string()
            }
        }
        _ => return None,
    };
    let frac = frac.trim_end_matches('0');
    let frac = if frac.is_empty() {
        String::new()
    } else {
        format!(".{frac}")
    };
    Some(format!("{}T{}{frac}{zone}", &s[..10], &s[11..19]))
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

    /// Both callers' cases: inspect's config times and convert's config times.
    #[test]
    fn times_as_go_marshals_them() {
        use super::go_time;
        let t = [
            // inspect (config `created` re-emitted as Go prints it)
            ("2024-01-02T03:04:05Z", Some("2024-01-02T03:04:05Z")),
            (
                "2024-01-02T03:04:05.120000000Z",
                Some("2024-01-02T03:04:05.12Z"),
            ),
            ("2024-01-02T03:04:05.000Z", Some("2024-01-02T03:04:05Z")),
            (
                "2024-01-02T03:04:05+02:00",
                Some("2024-01-02T03:04:05+02:00"),
            ),
            ("2024-01-02T03:04:05+00:00", Some("2024-01-02T03:04:05Z")),
            ("2024-01-02 03:04:05", None),
            ("yesterday", None),
            // convert (Docker config ⇄ OCI config)
            ("2021-01-01T00:00:00Z", Some("2021-01-01T00:00:00Z")),
            (
                "2021-01-01T00:00:00.500000Z",
                Some("2021-01-01T00:00:00.5Z"),
            ),
            ("2021-01-01T00:00:00.000Z", Some("2021-01-01T00:00:00Z")),
            (
                "2021-01-01T02:00:00+02:00",
                Some("2021-01-01T02:00:00+02:00"),
            ),
            ("2021-01-01T00:00:00+00:00", Some("2021-01-01T00:00:00Z")),
            ("2021-01-01", None),
            // the stricter checks: zone digits, and digits after a `.`
            ("2021-01-01T00:00:00-00:00", Some("2021-01-01T00:00:00Z")),
            ("2021-01-01T00:00:00z", Some("2021-01-01T00:00:00Z")),
            ("2021-01-01T00:00:00+0a:00", None),
            ("2021-01-01T00:00:00+02:0x", None),
            ("2021-01-01T00:00:00.Z", None),
            ("2021-01-01T00:00:00+02-00", None),
        ];
        for (s, want) in t {
            assert_eq!(go_time(s).as_deref(), want, "{s}");
        }
    }
}
