//! Go's `text/template`, the part scripts write in `skopeo inspect --format`:
//! field paths (`.Labels.k`, `$x.Os`), variables, pipes, literals, `if`/`else
//! if`/`else`, `range` (with `$i, $e :=` and `else`), `with`, `break`/`continue`,
//! trim markers and comments, and the builtins `and or not len index slice eq
//! ne lt le gt ge print printf println html`, plus `json` (as podman's
//! templates have it; skopeo 1.9 has none and only special-cases `{{json .}}`).
//! Values print as Go's `fmt` prints them (`[a b]`, `map[k:v]`, `<no value>`).
//! What is outside this subset is refused at parse time, naming the action.
//! skopeo writes through a `text/tabwriter` that it never flushes:
//! [`tabwriter_unflushed`] reproduces that output (tab-separated cells aligned,
//! a last block of lines with tabs left out).

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// A value a template reads: Go's kinds as `skopeo inspect`'s document holds them.
#[derive(Debug, Clone)]
pub enum Value {
    /// A string (or a `digest.Digest`, which has no methods here).
    Str(String),
    /// An integer (a literal, `len`, a range index).
    Int(i64),
    /// A floating-point literal.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// A slice (`nil` and empty alike print `[]`).
    List(Vec<Value>),
    /// A `map[string]string` (keys sorted, as Go prints them).
    Map(BTreeMap<String, Value>),
    /// A struct: exported fields in declaration order.
    Struct(Vec<(String, Value)>),
    /// A nil pointer, interface or map printed as `<nil>`.
    Nil,
    /// A `*time.Time`: Go's `time.Time.String()` spelling, printed as is.
    Time(String),
    /// No value: a map key that is absent (prints `<no value>`).
    Missing,
}

impl Value {
    /// Go's `truth`: false for zero values, empty strings, slices and maps, and nil.
    fn truth(&self) -> bool {
        match self {
            Value::Str(s) => !s.is_empty(),
            Value::Int(i) => *i != 0,
            Value::Float(f) => *f != 0.0,
            Value::Bool(b) => *b,
            Value::List(l) => !l.is_empty(),
            Value::Map(m) => !m.is_empty(),
            Value::Struct(_) | Value::Time(_) => true,
            Value::Nil | Value::Missing => false,
        }
    }

    /// Go's name of the kind, for errors and `%T`.
    fn type_name(&self) -> &'static str {
        match self {
            Value::Str(_) => "string",
            Value::Int(_) => "int",
            Value::Float(_) => "float64",
            Value::Bool(_) => "bool",
            Value::List(_) => "[]interface {}",
            Value::Map(_) => "map[string]string",
            Value::Struct(_) => "struct",
            Value::Nil => "<nil>",
            Value::Time(_) => "*time.Time",
            Value::Missing => "<invalid>",
        }
    }

    /// Go's `%v`.
    fn go_v(&self) -> String {
        match self {
            Value::Str(s) | Value::Time(s) => s.clone(),
            Value::Int(i) => i.to_string(),
            Value::Float(f) => go_float(*f),
            Value::Bool(b) => b.to_string(),
            Value::List(l) => format!(
                "[{}]",
                l.iter().map(Value::go_v).collect::<Vec<_>>().join(" ")
            ),
            Value::Map(m) => format!(
                "map[{}]",
                m.iter()
                    .map(|(k, v)| format!("{k}:{}", v.go_v()))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            Value::Struct(f) => format!(
                "{{{}}}",
                f.iter()
                    .map(|(_, v)| v.go_v())
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            Value::Nil => "<nil>".into(),
            Value::Missing => "<no value>".into(),
        }
    }

    /// The value as JSON (the `json` function): compact, HTML characters kept, as podman's.
    fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::Str(s) | Value::Time(s) => J::String(s.clone()),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => J::from(*f),
            Value::Bool(b) => J::Bool(*b),
            Value::List(l) => J::Array(l.iter().map(Value::to_json).collect()),
            Value::Map(m) => J::Object(m.iter().map(|(k, v)| (k.clone(), v.to_json())).collect()),
            Value::Struct(f) => {
                J::Object(f.iter().map(|(k, v)| (k.clone(), v.to_json())).collect())
            }
            Value::Nil | Value::Missing => J::Null,
        }
    }
}

/// Go's `%v` of a float64: shortest digits, exponent form below 1e-4 and from 1e21.
fn go_float(f: f64) -> String {
    if f == 0.0 || (f.abs() >= 1e-4 && f.abs() < 1e21) {
        return format!("{f}");
    }
    let s = format!("{f:e}");
    match s.split_once('e') {
        Some((m, e)) => {
            let (sign, digits) = e.strip_prefix('-').map_or(("+", e), |d| ("-", d));
            format!("{m}e{sign}{digits:0>2}")
        }
        None => s,
    }
}

// ---------------------------------------------------------------------------
// Parse tree.

#[derive(Debug, Clone)]
enum Term {
    Dot,
    Field(Vec<String>),
    Var(String, Vec<String>),
    Lit(Value),
    Func(String),
    Pipe(Box<Pipeline>, Vec<String>),
}

#[derive(Debug, Clone)]
struct Command(Vec<Term>);

#[derive(Debug, Clone)]
struct Pipeline {
    decl: Vec<String>,
    assign: bool,
    cmds: Vec<Command>,
}

#[derive(Debug, Clone)]
enum Node {
    Text(String),
    Action(Pipeline),
    If(Pipeline, Vec<Node>, Vec<Node>),
    Range(Pipeline, Vec<Node>, Vec<Node>),
    With(Pipeline, Vec<Node>, Vec<Node>),
    Break,
    Continue,
}

/// A parsed template.
#[derive(Debug, Clone)]
pub struct Template {
    name: String,
    nodes: Vec<Node>,
}

const FUNCS: &[&str] = &[
    "and", "or", "not", "len", "index", "slice", "eq", "ne", "lt", "le", "gt", "ge", "print",
    "printf", "println", "html", "json",
];

// ---------------------------------------------------------------------------
// Lexer: text and actions.

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Dot,
    Field(String),
    /// A field written right after a field, a variable or `)`: `.B` of `.A.B`, `$x.B`, `(…).B`.
    Chain(String),
    Var(String),
    Ident(String),
    Str(String),
    Num(String),
    Char(char),
    Pipe,
    LParen,
    RParen,
    Declare,
    Assign,
    Comma,
}

/// One piece of the source: text, or an action's tokens with its line.
enum Piece {
    Text(String),
    Action(Vec<Tok>, usize),
}

fn lex(name: &str, src: &str) -> Result<Vec<Piece>, String> {
    let err = |line: usize, msg: String| format!("template: {name}:{line}: {msg}");
    let mut out = Vec::new();
    let mut rest = src;
    let mut line = 1;
    while !rest.is_empty() {
        let Some(open) = rest.find("{{") else {
            out.push(Piece::Text(rest.to_string()));
            break;
        };
        let mut text = rest[..open].to_string();
        let mut inner = &rest[open + 2..];
        if inner.starts_with("- ") || inner.starts_with("-\t") || inner.starts_with("-\n") {
            text = text.trim_end().to_string();
            inner = &inner[1..];
        }
        line += rest[..open].matches('\n').count();
        out.push(Piece::Text(text));
        let action_line = line;
        // Comments.
        let trimmed = inner.trim_start();
        if let Some(c) = trimmed.strip_prefix("/*") {
            let end = c
                .find("*/")
                .ok_or_else(|| err(action_line, "unclosed comment".into()))?;
            let after = c[end + 2..].trim_start_matches([' ', '\t', '\n']);
            let (trim_right, after) = if let Some(a) = after.strip_prefix("-}}") {
                (true, a)
            } else if let Some(a) = after.strip_prefix("}}") {
                (false, a)
            } else {
                return Err(err(
                    action_line,
                    "comment ends before closing delimiter".into(),
                ));
            };
            line += inner[..inner.len() - after.len()].matches('\n').count();
            rest = if trim_right {
                after.trim_start()
            } else {
                after
            };
            continue;
        }
        let mut toks = Vec::new();
        let mut s = inner;
        let trim_right;
        loop {
            let t = s.trim_start_matches([' ', '\t', '\r', '\n']);
            let spaced = t.len() != s.len();
            s = t;
            if let Some(a) = s.strip_prefix(" -}}").or_else(|| s.strip_prefix("-}}")) {
                trim_right = true;
                s = a;
                break;
            }
            if let Some(a) = s.strip_prefix("}}") {
                trim_right = false;
                s = a;
                break;
            }
            let c = match s.chars().next() {
                Some(c) => c,
                None => return Err(err(line, "unclosed action".into())),
            };
            match c {
                '|' => {
                    toks.push(Tok::Pipe);
                    s = &s[1..];
                }
                '(' => {
                    toks.push(Tok::LParen);
                    s = &s[1..];
                }
                ')' => {
                    toks.push(Tok::RParen);
                    s = &s[1..];
                }
                ',' => {
                    toks.push(Tok::Comma);
                    s = &s[1..];
                }
                ':' if s.starts_with(":=") => {
                    toks.push(Tok::Declare);
                    s = &s[2..];
                }
                '=' => {
                    toks.push(Tok::Assign);
                    s = &s[1..];
                }
                '"' => {
                    let (lit, len) =
                        quoted(s).ok_or_else(|| err(line, "unterminated quoted string".into()))?;
                    toks.push(Tok::Str(lit));
                    s = &s[len..];
                }
                '`' => {
                    let end = s[1..]
                        .find('`')
                        .ok_or_else(|| err(line, "unterminated raw quoted string".into()))?;
                    toks.push(Tok::Str(s[1..1 + end].to_string()));
                    line += s[1..1 + end].matches('\n').count();
                    s = &s[end + 2..];
                }
                '\'' => {
                    let mut it = s[1..].chars();
                    let ch = match it.next() {
                        Some('\\') => match it.next() {
                            Some('n') => '\n',
                            Some('t') => '\t',
                            Some(c) => c,
                            None => {
                                return Err(err(line, "unterminated character constant".into()));
                            }
                        },
                        Some(c) => c,
                        None => return Err(err(line, "unterminated character constant".into())),
                    };
                    if it.next() != Some('\'') {
                        return Err(err(line, "unterminated character constant".into()));
                    }
                    let used = s[1..].len() - it.as_str().len() + 1;
                    toks.push(Tok::Char(ch));
                    s = &s[used..];
                }
                '.' if s[1..].starts_with(|c: char| c.is_alphabetic() || c == '_') => {
                    let n = ident_len(&s[1..]);
                    let name = s[1..1 + n].to_string();
                    let chained = !spaced
                        && matches!(
                            toks.last(),
                            Some(Tok::Field(_) | Tok::Chain(_) | Tok::Var(_) | Tok::RParen)
                        );
                    toks.push(if chained {
                        Tok::Chain(name)
                    } else {
                        Tok::Field(name)
                    });
                    s = &s[1 + n..];
                }
                '.' if !s[1..].starts_with(|c: char| c.is_ascii_digit()) => {
                    toks.push(Tok::Dot);
                    s = &s[1..];
                }
                '$' => {
                    let n = ident_len(&s[1..]);
                    toks.push(Tok::Var(s[..1 + n].to_string()));
                    s = &s[1 + n..];
                }
                c if c.is_ascii_digit() || c == '-' || c == '+' || c == '.' => {
                    let n = s
                        .find(|c: char| !(c.is_ascii_alphanumeric() || "._+-".contains(c)))
                        .unwrap_or(s.len());
                    toks.push(Tok::Num(s[..n].to_string()));
                    s = &s[n..];
                }
                c if c.is_alphabetic() || c == '_' => {
                    let n = ident_len(s);
                    toks.push(Tok::Ident(s[..n].to_string()));
                    s = &s[n..];
                }
                c => return Err(err(line, format!("unexpected {c:?} in command"))),
            }
        }
        out.push(Piece::Action(toks, action_line));
        line += inner[..inner.len() - s.len()].matches('\n').count();
        rest = if trim_right { s.trim_start() } else { s };
    }
    Ok(out)
}

fn ident_len(s: &str) -> usize {
    s.find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(s.len())
}

/// A Go interpreted string literal at the start of `s`: its value and its length in `s`.
fn quoted(s: &str) -> Option<(String, usize)> {
    let mut out = String::new();
    let mut it = s.char_indices().skip(1);
    while let Some((i, c)) = it.next() {
        match c {
            '"' => return Some((out, i + 1)),
            '\n' => return None,
            '\\' => {
                let (_, e) = it.next()?;
                match e {
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    'r' => out.push('\r'),
                    'a' => out.push('\u{7}'),
                    'b' => out.push('\u{8}'),
                    'f' => out.push('\u{c}'),
                    'v' => out.push('\u{b}'),
                    '\\' => out.push('\\'),
                    '"' => out.push('"'),
                    '\'' => out.push('\''),
                    'u' | 'U' | 'x' => {
                        let n = match e {
                            'u' => 4,
                            'U' => 8,
                            _ => 2,
                        };
                        let hex: String = (0..n).filter_map(|_| it.next().map(|x| x.1)).collect();
                        out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                    }
                    _ => return None,
                }
            }
            c => out.push(c),
        }
    }
    None
}

// ---------------------------------------------------------------------------
// Parser.

struct Parser<'a> {
    name: &'a str,
    pieces: std::iter::Peekable<std::vec::IntoIter<Piece>>,
    line: usize,
}

/// What ended a list of nodes.
enum Stop {
    Eof,
    End,
    Else(Vec<Tok>),
}

impl Parser<'_> {
    fn err(&self, msg: impl std::fmt::Display) -> String {
        format!("template: {}:{}: {msg}", self.name, self.line)
    }

    fn list(&mut self) -> Result<(Vec<Node>, Stop), String> {
        let mut nodes = Vec::new();
        while let Some(p) = self.pieces.next() {
            let (toks, line) = match p {
                Piece::Text(t) => {
                    if !t.is_empty() {
                        nodes.push(Node::Text(t));
                    }
                    continue;
                }
                Piece::Action(toks, line) => (toks, line),
            };
            self.line = line;
            let (head, rest) = match toks.split_first() {
                Some((Tok::Ident(k), rest)) => (k.as_str(), rest.to_vec()),
                None => return Err(self.err("missing value for command")),
                _ => ("", toks.clone()),
            };
            match head {
                "end" if rest.is_empty() => return Ok((nodes, Stop::End)),
                "else" => return Ok((nodes, Stop::Else(rest))),
                "if" | "range" | "with" => nodes.push(self.control(head, &rest)?),
                "break" | "continue" if rest.is_empty() => nodes.push(if head == "break" {
                    Node::Break
                } else {
                    Node::Continue
                }),
                "define" | "template" | "block" => {
                    return Err(self.err(format!("{{{{{head}}}}} is not supported by ferry")));
                }
                _ => nodes.push(Node::Action(self.pipeline(&toks, false)?)),
            }
        }
        Ok((nodes, Stop::Eof))
    }

    fn control(&mut self, kw: &str, toks: &[Tok]) -> Result<Node, String> {
        let pipe = self.pipeline(toks, kw == "range")?;
        let (body, end) = self.list()?;
        let else_ = match end {
            Stop::Eof => return Err(self.err("unexpected EOF")),
            Stop::End => Vec::new(),
            Stop::Else(rest) if rest.is_empty() => match self.list()? {
                (n, Stop::End) => n,
                (_, Stop::Eof) => return Err(self.err("unexpected EOF")),
                (_, Stop::Else(_)) => return Err(self.err("expected end; found {{else}}")),
            },
            // `else if …` / `else with …`: the rest of the chain is one nested node, ended by the one `end`.
            Stop::Else(rest) => match rest.split_first() {
                Some((Tok::Ident(k), r))
                    if (k == "if" && kw == "if") || (k == "with" && kw == "with") =>
                {
                    vec![self.control(k, r)?]
                }
                _ => return Err(self.err("unexpected tokens after else")),
            },
        };
        Ok(match kw {
            "if" => Node::If(pipe, body, else_),
            "range" => Node::Range(pipe, body, else_),
            _ => Node::With(pipe, body, else_),
        })
    }

    fn pipeline(&self, toks: &[Tok], range: bool) -> Result<Pipeline, String> {
        let mut decl = Vec::new();
        let mut assign = false;
        let mut toks = toks;
        // `$x :=`, `$x =`, or in range `$i, $e :=`.
        match toks {
            [Tok::Var(v), Tok::Declare, rest @ ..] => {
                decl.push(v.clone());
                toks = rest;
            }
            [Tok::Var(v), Tok::Assign, rest @ ..] => {
                decl.push(v.clone());
                assign = true;
                toks = rest;
            }
            [
                Tok::Var(a),
                Tok::Comma,
                Tok::Var(b),
                Tok::Declare,
                rest @ ..,
            ] if range => {
                decl.push(a.clone());
                decl.push(b.clone());
                toks = rest;
            }
            _ => {}
        }
        let mut pos = 0;
        let cmds = self.commands(toks, &mut pos)?;
        if pos != toks.len() {
            return Err(self.err(format!("unexpected {:?} in operand", toks[pos])));
        }
        Ok(Pipeline { decl, assign, cmds })
    }

    fn commands(&self, toks: &[Tok], pos: &mut usize) -> Result<Vec<Command>, String> {
        let mut cmds = Vec::new();
        loop {
            let mut terms = Vec::new();
            while *pos < toks.len() && !matches!(toks[*pos], Tok::Pipe | Tok::RParen) {
                terms.push(self.operand(toks, pos)?);
            }
            if terms.is_empty() {
                return Err(self.err("missing value for command"));
            }
            cmds.push(Command(terms));
            if *pos < toks.len() && toks[*pos] == Tok::Pipe {
                *pos += 1;
                continue;
            }
            return Ok(cmds);
        }
    }

    fn operand(&self, toks: &[Tok], pos: &mut usize) -> Result<Term, String> {
        let t = toks[*pos].clone();
        *pos += 1;
        let mut term = match t {
            Tok::Dot => Term::Dot,
            Tok::Field(f) => Term::Field(vec![f]),
            Tok::Var(v) => Term::Var(v, Vec::new()),
            Tok::Str(s) => Term::Lit(Value::Str(s)),
            Tok::Char(c) => Term::Lit(Value::Int(c as i64)),
            Tok::Num(n) => {
                Term::Lit(number(&n).ok_or_else(|| self.err(format!("bad number syntax: {n:?}")))?)
            }
            Tok::Ident(i) => match i.as_str() {
                "true" => Term::Lit(Value::Bool(true)),
                "false" => Term::Lit(Value::Bool(false)),
                "nil" => return Err(self.err("nil is not a command")),
                f if FUNCS.contains(&f) => Term::Func(i),
                f => return Err(self.err(format!("function {f:?} not defined"))),
            },
            Tok::LParen => {
                let cmds = self.commands(toks, pos)?;
                if toks.get(*pos) != Some(&Tok::RParen) {
                    return Err(self.err("unclosed left paren"));
                }
                *pos += 1;
                Term::Pipe(
                    Box::new(Pipeline {
                        decl: Vec::new(),
                        assign: false,
                        cmds,
                    }),
                    Vec::new(),
                )
            }
            other => return Err(self.err(format!("unexpected {other:?} in operand"))),
        };
        // A chain of fields after a variable, a field or a parenthesised pipeline.
        while let Some(Tok::Chain(f)) = toks.get(*pos) {
            match &mut term {
                Term::Field(v) | Term::Var(_, v) | Term::Pipe(_, v) => v.push(f.clone()),
                _ => break,
            }
            *pos += 1;
        }
        Ok(term)
    }
}

fn number(s: &str) -> Option<Value> {
    let (neg, body) = match s.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let body = body.replace('_', "");
    let int = if let Some(h) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
        i64::from_str_radix(h, 16).ok()
    } else if let Some(o) = body.strip_prefix("0o") {
        i64::from_str_radix(o, 8).ok()
    } else if let Some(b) = body.strip_prefix("0b") {
        i64::from_str_radix(b, 2).ok()
    } else {
        body.parse::<i64>().ok()
    };
    match int {
        Some(i) => Some(Value::Int(if neg { -i } else { i })),
        None => body
            .parse::<f64>()
            .ok()
            .map(|f| Value::Float(if neg { -f } else { f })),
    }
}

impl Template {
    /// Parses `src`; `name` is the template's name in errors (`template: NAME:LINE: …`, as Go's).
    pub fn parse(name: &str, src: &str) -> Result<Template, String> {
        let pieces = lex(name, src)?;
        let mut p = Parser {
            name,
            pieces: pieces.into_iter().peekable(),
            line: 1,
        };
        let (nodes, end) = p.list()?;
        match end {
            Stop::Eof => Ok(Template {
                name: name.to_string(),
                nodes,
            }),
            Stop::End => Err(p.err("unexpected {{end}}")),
            Stop::Else(_) => Err(p.err("unexpected {{else}}")),
        }
    }

    /// Runs the template over `data`; an error names what could not be evaluated.
    pub fn execute(&self, data: &Value) -> Result<String, String> {
        let mut ex = Exec {
            name: &self.name,
            vars: vec![("$".to_string(), data.clone())],
            out: String::new(),
        };
        match ex.nodes(&self.nodes, data)? {
            Flow::Normal => Ok(ex.out),
            _ => Err(format!(
                "template: {}: break or continue outside range",
                self.name
            )),
        }
    }
}

// ---------------------------------------------------------------------------
// Execution.

enum Flow {
    Normal,
    Break,
    Continue,
}

struct Exec<'a> {
    name: &'a str,
    vars: Vec<(String, Value)>,
    out: String,
}

impl Exec<'_> {
    fn err(&self, msg: impl std::fmt::Display) -> String {
        format!("template: {}: executing {:?}: {msg}", self.name, self.name)
    }

    fn nodes(&mut self, nodes: &[Node], dot: &Value) -> Result<Flow, String> {
        for n in nodes {
            match self.node(n, dot)? {
                Flow::Normal => {}
                f => return Ok(f),
            }
        }
        Ok(Flow::Normal)
    }

    /// Runs `body` with variables declared inside it dropped afterwards.
    fn scoped(&mut self, body: &[Node], dot: &Value) -> Result<Flow, String> {
        let mark = self.vars.len();
        let r = self.nodes(body, dot);
        self.vars.truncate(mark);
        r
    }

    fn node(&mut self, n: &Node, dot: &Value) -> Result<Flow, String> {
        match n {
            Node::Text(t) => self.out.push_str(t),
            Node::Action(p) => {
                let v = self.pipeline(p, dot)?;
                if p.decl.is_empty() {
                    let s = self.printable(&v)?;
                    self.out.push_str(&s);
                }
            }
            Node::Break => return Ok(Flow::Break),
            Node::Continue => return Ok(Flow::Continue),
            Node::If(p, then, else_) | Node::With(p, then, else_) => {
                let mark = self.vars.len();
                let v = self.pipeline(p, dot)?;
                let flow = if v.truth() {
                    let d = if matches!(n, Node::With(..)) {
                        v
                    } else {
                        dot.clone()
                    };
                    self.scoped(then, &d)
                } else {
                    self.scoped(else_, dot)
                };
                self.vars.truncate(mark);
                return flow;
            }
            Node::Range(p, body, else_) => {
                let mark = self.vars.len();
                let inner = Pipeline {
                    decl: Vec::new(),
                    assign: false,
                    cmds: p.cmds.clone(),
                };
                let v = self.pipeline(&inner, dot)?;
                let items: Vec<(Value, Value)> = match v {
                    Value::List(l) => l
                        .into_iter()
                        .enumerate()
                        .map(|(i, x)| (Value::Int(i as i64), x))
                        .collect(),
                    Value::Map(m) => m.into_iter().map(|(k, x)| (Value::Str(k), x)).collect(),
                    Value::Int(n) => (0..n).map(|i| (Value::Int(i), Value::Int(i))).collect(),
                    Value::Nil | Value::Missing => Vec::new(),
                    other => {
                        return Err(self.err(format!("range can't iterate over {}", other.go_v())));
                    }
                };
                if items.is_empty() {
                    let f = self.scoped(else_, dot)?;
                    self.vars.truncate(mark);
                    return Ok(f);
                }
                for (k, x) in items {
                    let inner_mark = self.vars.len();
                    match p.decl.as_slice() {
                        [e] => self.vars.push((e.clone(), x.clone())),
                        [i, e] => {
                            self.vars.push((i.clone(), k));
                            self.vars.push((e.clone(), x.clone()));
                        }
                        _ => {}
                    }
                    let f = self.nodes(body, &x)?;
                    self.vars.truncate(inner_mark);
                    if matches!(f, Flow::Break) {
                        break;
                    }
                }
                self.vars.truncate(mark);
            }
        }
        Ok(Flow::Normal)
    }

    /// What an action prints: `%v`, with `<no value>` for no value.
    fn printable(&self, v: &Value) -> Result<String, String> {
        Ok(v.go_v())
    }

    fn pipeline(&mut self, p: &Pipeline, dot: &Value) -> Result<Value, String> {
        let mut piped: Option<Value> = None;
        for c in &p.cmds {
            piped = Some(self.command(c, dot, piped)?);
        }
        let v = piped.unwrap_or(Value::Missing);
        if p.assign {
            let name = &p.decl[0];
            match self.vars.iter_mut().rev().find(|(n, _)| n == name) {
                Some(slot) => slot.1 = v.clone(),
                None => return Err(self.err(format!("undefined variable: {name}"))),
            }
        } else if let [name] = p.decl.as_slice() {
            self.vars.push((name.clone(), v.clone()));
        }
        Ok(v)
    }

    fn command(&mut self, c: &Command, dot: &Value, piped: Option<Value>) -> Result<Value, String> {
        let (first, args) = c.0.split_first().expect("commands are never empty");
        if let Term::Func(f) = first {
            return self.call(f, args, dot, piped);
        }
        if !args.is_empty() || piped.is_some() {
            return Err(self.err(format!(
                "can't give argument to non-function {}",
                describe(first)
            )));
        }
        self.term(first, dot)
    }

    fn term(&mut self, t: &Term, dot: &Value) -> Result<Value, String> {
        match t {
            Term::Dot => Ok(dot.clone()),
            Term::Lit(v) => Ok(v.clone()),
            Term::Field(path) => self.fields(dot.clone(), path),
            Term::Var(name, path) => {
                let v = self
                    .vars
                    .iter()
                    .rev()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.clone())
                    .ok_or_else(|| self.err(format!("undefined variable: {name}")))?;
                self.fields(v, path)
            }
            Term::Pipe(p, path) => {
                let v = self.pipeline(p, dot)?;
                self.fields(v, path)
            }
            Term::Func(f) => self.call(f, &[], dot, None),
        }
    }

    fn fields(&self, mut v: Value, path: &[String]) -> Result<Value, String> {
        for f in path {
            v = match v {
                Value::Struct(fields) => fields
                    .into_iter()
                    .find(|(n, _)| n == f)
                    .map(|(_, v)| v)
                    .ok_or_else(|| {
                    self.err(format!("can't evaluate field {f} in type interface {{}}"))
                })?,
                Value::Map(m) => m.get(f).cloned().unwrap_or(Value::Missing),
                Value::Nil => {
                    return Err(self.err(format!("nil pointer evaluating interface {{}}.{f}")));
                }
                other => {
                    return Err(self.err(format!(
                        "can't evaluate field {f} in type {}",
                        other.type_name()
                    )));
                }
            };
        }
        Ok(v)
    }

    fn call(
        &mut self,
        f: &str,
        args: &[Term],
        dot: &Value,
        piped: Option<Value>,
    ) -> Result<Value, String> {
        // `and` and `or` stop at the first argument that decides.
        if f == "and" || f == "or" {
            let n = args.len() + usize::from(piped.is_some());
            if n == 0 {
                return Err(self.err(format!(
                    "wrong number of args for {f}: want at least 1 got 0"
                )));
            }
            let mut last = Value::Missing;
            for a in args {
                last = self.term(a, dot)?;
                if last.truth() != (f == "and") {
                    return Ok(last);
                }
            }
            if let Some(p) = piped {
                last = p;
            }
            return Ok(last);
        }
        let mut vals = Vec::with_capacity(args.len() + 1);
        for a in args {
            vals.push(self.term(a, dot)?);
        }
        vals.extend(piped);
        let want = |n: usize, vals: &[Value]| -> Result<(), String> {
            if vals.len() == n {
                Ok(())
            } else {
                Err(self.err(format!(
                    "wrong number of args for {f}: want {n} got {}",
                    vals.len()
                )))
            }
        };
        match f {
            "not" => {
                want(1, &vals)?;
                Ok(Value::Bool(!vals[0].truth()))
            }
            "len" => {
                want(1, &vals)?;
                match &vals[0] {
                    Value::Str(s) => Ok(Value::Int(s.len() as i64)),
                    Value::List(l) => Ok(Value::Int(l.len() as i64)),
                    Value::Map(m) => Ok(Value::Int(m.len() as i64)),
                    Value::Nil => Ok(Value::Int(0)),
                    other => Err(self.err(format!(
                        "error calling len: len of type {}",
                        other.type_name()
                    ))),
                }
            }
            "index" => {
                let (first, keys) = vals.split_first().ok_or_else(|| {
                    self.err("wrong number of args for index: want at least 1 got 0")
                })?;
                let mut v = first.clone();
                for k in keys {
                    v = match (&v, k) {
                        (Value::List(l), Value::Int(i)) => l
                            .get(usize::try_from(*i).unwrap_or(usize::MAX))
                            .cloned()
                            .ok_or_else(|| {
                                self.err(format!("error calling index: index out of range: {i}"))
                            })?,
                        (Value::Str(s), Value::Int(i)) => s
                            .as_bytes()
                            .get(usize::try_from(*i).unwrap_or(usize::MAX))
                            .map(|b| Value::Int(i64::from(*b)))
                            .ok_or_else(|| {
                                self.err(format!("error calling index: index out of range: {i}"))
                            })?,
                        (Value::Map(m), Value::Str(s)) => {
                            m.get(s).cloned().unwrap_or(Value::Str(String::new()))
                        }
                        (Value::Nil, _) => Value::Missing,
                        (v, k) => {
                            return Err(self.err(format!(
                                "error calling index: cannot index {} with {}",
                                v.type_name(),
                                k.type_name()
                            )));
                        }
                    };
                }
                Ok(v)
            }
            "slice" => {
                let (first, idx) = vals
                    .split_first()
                    .ok_or_else(|| self.err("wrong number of args for slice"))?;
                let ints: Vec<usize> =
                    idx.iter()
                        .map(|i| match i {
                            Value::Int(i) if *i >= 0 => Ok(*i as usize),
                            _ => Err(self
                                .err("error calling slice: cannot index slice with a non-integer")),
                        })
                        .collect::<Result<_, _>>()?;
                let len = match first {
                    Value::Str(s) => s.len(),
                    Value::List(l) => l.len(),
                    other => {
                        return Err(self.err(format!(
                            "error calling slice: can't slice item of type {}",
                            other.type_name()
                        )));
                    }
                };
                let (a, b) = match ints.as_slice() {
                    [] => (0, len),
                    [a] => (*a, len),
                    [a, b] => (*a, *b),
                    _ => return Err(self.err("error calling slice: too many slice indexes")),
                };
                if a > b || b > len {
                    return Err(self.err(format!("error calling slice: index out of range: {b}")));
                }
                match first {
                    Value::Str(s) => {
                        s.get(a..b)
                            .map(|x| Value::Str(x.to_string()))
                            .ok_or_else(|| {
                                self.err("error calling slice: not at a character boundary")
                            })
                    }
                    Value::List(l) => Ok(Value::List(l[a..b].to_vec())),
                    _ => unreachable!("checked above"),
                }
            }
            "eq" | "ne" | "lt" | "le" | "gt" | "ge" => {
                if vals.len() < 2 || (f != "eq" && vals.len() != 2) {
                    return Err(self.err(format!(
                        "wrong number of args for {f}: want 2 got {}",
                        vals.len()
                    )));
                }
                if f == "eq" {
                    for other in &vals[1..] {
                        if self.compare(&vals[0], other)? == std::cmp::Ordering::Equal {
                            return Ok(Value::Bool(true));
                        }
                    }
                    return Ok(Value::Bool(false));
                }
                let o = self.compare(&vals[0], &vals[1])?;
                use std::cmp::Ordering::*;
                Ok(Value::Bool(match f {
                    "ne" => o != Equal,
                    "lt" => o == Less,
                    "le" => o != Greater,
                    "gt" => o == Greater,
                    _ => o != Less,
                }))
            }
            "print" => Ok(Value::Str(sprint(&vals))),
            "println" => Ok(Value::Str(
                vals.iter().map(Value::go_v).collect::<Vec<_>>().join(" ") + "\n",
            )),
            "printf" => {
                let (fmt, rest) = vals.split_first().ok_or_else(|| {
                    self.err("wrong number of args for printf: want at least 1 got 0")
                })?;
                let Value::Str(fmt) = fmt else {
                    return Err(self.err(format!(
                        "wrong type for value; expected string; got {}",
                        fmt.type_name()
                    )));
                };
                Ok(Value::Str(sprintf(fmt, rest)))
            }
            "html" => Ok(Value::Str(
                sprint(&vals)
                    .replace('&', "&amp;")
                    .replace('<', "&lt;")
                    .replace('>', "&gt;")
                    .replace('"', "&#34;")
                    .replace('\'', "&#39;")
                    .replace('\0', "\u{FFFD}"),
            )),
            "json" => {
                want(1, &vals)?;
                Ok(Value::Str(
                    serde_json::to_string(&vals[0].to_json()).expect("values serialise"),
                ))
            }
            _ => Err(self.err(format!("function {f:?} not defined"))),
        }
    }

    /// Go's basic comparison: same kinds only (integers and strings, booleans for equality).
    fn compare(&self, a: &Value, b: &Value) -> Result<std::cmp::Ordering, String> {
        match (a, b) {
            (Value::Str(x), Value::Str(y)) => Ok(x.cmp(y)),
            (Value::Int(x), Value::Int(y)) => Ok(x.cmp(y)),
            (Value::Float(x), Value::Float(y)) => x
                .partial_cmp(y)
                .ok_or_else(|| self.err("error calling compare: NaN")),
            (Value::Bool(x), Value::Bool(y)) => Ok(x.cmp(y)),
            _ => Err(self.err("error calling eq: incompatible types for comparison")),
        }
    }
}

fn describe(t: &Term) -> String {
    match t {
        Term::Dot => ".".into(),
        Term::Field(p) => format!(".{}", p.join(".")),
        Term::Var(v, p) if p.is_empty() => v.clone(),
        Term::Var(v, p) => format!("{v}.{}", p.join(".")),
        Term::Lit(v) => v.go_v(),
        Term::Func(f) => f.clone(),
        Term::Pipe(..) => "(...)".into(),
    }
}

/// `fmt.Sprint`: a space between operands when neither is a string.
fn sprint(vals: &[Value]) -> String {
    let mut out = String::new();
    for (i, v) in vals.iter().enumerate() {
        if i > 0 && !matches!(v, Value::Str(_)) && !matches!(vals[i - 1], Value::Str(_)) {
            out.push(' ');
        }
        out.push_str(&v.go_v());
    }
    out
}

/// `fmt.Sprintf` for the verbs scripts use: `%v %s %d %q %x %X %f %t %T %%`, with flags
/// `-+0 #`, width and precision; a verb that does not fit its operand prints `%!d(string=…)`.
fn sprintf(fmt: &str, args: &[Value]) -> String {
    let mut out = String::new();
    let mut args = args.iter();
    let mut chars = fmt.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let (mut minus, mut plus, mut zero) = (false, false, false);
        while let Some(&f) = chars.peek() {
            match f {
                '-' => minus = true,
                '+' => plus = true,
                '0' => zero = true,
                ' ' | '#' => {}
                _ => break,
            }
            chars.next();
        }
        let num = |chars: &mut std::iter::Peekable<std::str::Chars>| {
            let mut n: Option<usize> = None;
            while let Some(d) = chars.peek().and_then(|c| c.to_digit(10)) {
                n = Some(n.unwrap_or(0) * 10 + d as usize);
                chars.next();
            }
            n
        };
        let width = num(&mut chars);
        let prec = if chars.peek() == Some(&'.') {
            chars.next();
            Some(num(&mut chars).unwrap_or(0))
        } else {
            None
        };
        let Some(verb) = chars.next() else {
            out.push_str("%!(NOVERB)");
            break;
        };
        if verb == '%' {
            out.push('%');
            continue;
        }
        let Some(arg) = args.next() else {
            let _ = write!(out, "%!{verb}(MISSING)");
            continue;
        };
        let bad = || format!("%!{verb}({}={})", arg.type_name(), arg.go_v());
        let body = match (verb, arg) {
            ('v', _) => arg.go_v(),
            ('s', Value::Int(_) | Value::Bool(_) | Value::Float(_)) => bad(),
            ('s', _) => {
                let s = arg.go_v();
                match prec {
                    Some(p) => s.chars().take(p).collect(),
                    None => s,
                }
            }
            ('q', Value::Str(s)) => serde_json::to_string(s).expect("strings serialise"),
            ('d', Value::Int(i)) => {
                if plus && *i >= 0 {
                    format!("+{i}")
                } else {
                    i.to_string()
                }
            }
            ('x', Value::Int(i)) => format!("{i:x}"),
            ('X', Value::Int(i)) => format!("{i:X}"),
            ('x', Value::Str(s)) => s.bytes().map(|b| format!("{b:02x}")).collect(),
            ('f' | 'F', Value::Float(x)) => {
                let s = format!("{x:.*}", prec.unwrap_or(6));
                if plus && *x >= 0.0 {
                    format!("+{s}")
                } else {
                    s
                }
            }
            ('t', Value::Bool(b)) => b.to_string(),
            ('T', _) => arg.type_name().to_string(),
            _ => bad(),
        };
        let pad = width.unwrap_or(0).saturating_sub(body.chars().count());
        if minus {
            out.push_str(&body);
            out.extend(std::iter::repeat_n(' ', pad));
        } else if zero && matches!(arg, Value::Int(_) | Value::Float(_)) && pad > 0 {
            let (sign, digits) = match body.strip_prefix(['-', '+']) {
                Some(d) => (&body[..1], d),
                None => ("", body.as_str()),
            };
            out.push_str(sign);
            out.extend(std::iter::repeat_n('0', pad));
            out.push_str(digits);
        } else {
            out.extend(std::iter::repeat_n(' ', pad));
            out.push_str(&body);
        }
    }
    let extra: Vec<&Value> = args.collect();
    if !extra.is_empty() {
        out.push_str("%!(EXTRA ");
        out.push_str(
            &extra
                .iter()
                .map(|v| format!("{}={}", v.type_name(), v.go_v()))
                .collect::<Vec<_>>()
                .join(", "),
        );
        out.push(')');
    }
    out
}

// ---------------------------------------------------------------------------
// skopeo's output writer.

/// What Go's `tabwriter.NewWriter(w, 8, 2, 2, ' ', 0)` writes for `text` when it is never
/// flushed (skopeo's `inspect --format`): each block of lines ends at a line without a tab
/// and is written with its tab-separated cells padded into columns; what follows the last
/// such line stays in the buffer and is never written.
pub fn tabwriter_unflushed(text: &str) -> String {
    const MINWIDTH: usize = 8;
    const PADDING: usize = 2;
    let mut out = String::new();
    // Lines of cells; a cell is its text; the last cell of a line is not tab-terminated.
    let mut lines: Vec<Vec<String>> = vec![Vec::new()];
    let mut cell = String::new();
    for ch in text.chars() {
        match ch {
            '\t' | '\u{b}' | '\n' | '\u{c}' => {
                lines
                    .last_mut()
                    .expect("one line")
                    .push(std::mem::take(&mut cell));
                let ncells = lines.last().expect("one line").len();
                if ch == '\n' || ch == '\u{c}' {
                    lines.push(Vec::new());
                    if ch == '\u{c}' || ncells == 1 {
                        format_block(
                            &mut out,
                            &lines,
                            &mut Vec::new(),
                            0,
                            lines.len(),
                            MINWIDTH,
                            PADDING,
                        );
                        lines = vec![Vec::new()];
                    }
                }
            }
            c => cell.push(c),
        }
    }
    out
}

/// Go's `tabwriter.(*Writer).format`: columns found block by block, recursively.
fn format_block(
    out: &mut String,
    lines: &[Vec<String>],
    widths: &mut Vec<usize>,
    mut line0: usize,
    line1: usize,
    minwidth: usize,
    padding: usize,
) {
    let column = widths.len();
    let mut this = line0;
    while this < line1 {
        if column + 1 >= lines[this].len() {
            this += 1;
            continue;
        }
        write_lines(out, lines, widths, line0, this);
        line0 = this;
        let mut width = minwidth;
        while this < line1 && column + 1 < lines[this].len() {
            width = width.max(lines[this][column].chars().count() + padding);
            this += 1;
        }
        widths.push(width);
        format_block(out, lines, widths, line0, this, minwidth, padding);
        widths.pop();
        line0 = this;
    }
    write_lines(out, lines, widths, line0, line1);
}

/// Go's `tabwriter.(*Writer).writeLines` with a space pad character and no flags.
fn write_lines(
    out: &mut String,
    lines: &[Vec<String>],
    widths: &[usize],
    line0: usize,
    line1: usize,
) {
    for (i, line) in lines.iter().enumerate().take(line1).skip(line0) {
        for (j, c) in line.iter().enumerate() {
            out.push_str(c);
            if j < widths.len() {
                out.extend(std::iter::repeat_n(
                    ' ',
                    widths[j].saturating_sub(c.chars().count()),
                ));
            }
        }
        if i + 1 < lines.len() {
            out.push('\n');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> Value {
        Value::Struct(vec![
            ("Name".into(), Value::Str("h/r".into())),
            ("Os".into(), Value::Str("linux".into())),
            (
                "Labels".into(),
                Value::Map(
                    [
                        ("a b".to_string(), Value::Str("c".into())),
                        ("k".to_string(), Value::Str("v".into())),
                    ]
                    .into(),
                ),
            ),
            (
                "Layers".into(),
                Value::List(vec![Value::Str("l1".into()), Value::Str("l2".into())]),
            ),
            ("Env".into(), Value::Nil),
        ])
    }

    fn run(src: &str) -> Result<String, String> {
        Template::parse("t", src)?.execute(&doc())
    }

    #[test]
    fn the_forms_scripts_write() {
        for (src, want) in [
            ("{{.Name}} {{.Os}}", "h/r linux"),
            (
                "{{index .Labels \"k\"}}|{{index .Labels \"zz\"}}|{{.Labels.zz}}",
                "v||<no value>",
            ),
            ("{{range .Layers}}{{.}} {{end}}", "l1 l2 "),
            (
                "{{range $i, $e := .Layers}}{{$i}}={{$e}},{{end}}",
                "0=l1,1=l2,",
            ),
            (
                "{{range $k, $v := .Labels}}{{$k}}:{{$v}};{{end}}",
                "a b:c;k:v;",
            ),
            (
                "{{len .Layers}} {{len .Labels}} {{.Labels}} {{.Layers}} {{.Env}}",
                "2 2 map[a b:c k:v] [l1 l2] <nil>",
            ),
            ("{{if .Env}}e{{else if .Labels}}l{{else}}n{{end}}", "l"),
            (
                "{{with .Labels}}{{.k}}{{end}}{{with .Env}}x{{else}}y{{end}}",
                "vy",
            ),
            (
                "{{printf \"%s-%d|%5s|%-4s|%03d|%q|%v\" .Os 3 \"ab\" \"c\" 7 .Os .Layers}}",
                "linux-3|   ab|c   |007|\"linux\"|[l1 l2]",
            ),
            ("{{printf \"%d\" .Os}}", "%!d(string=linux)"),
            (
                "{{json .Labels}} {{json .Layers}}",
                "{\"a b\":\"c\",\"k\":\"v\"} [\"l1\",\"l2\"]",
            ),
            (
                "{{eq .Os \"a\" \"linux\"}} {{ne 1 2}} {{lt \"a\" \"b\"}} {{not .Env}}",
                "true true true true",
            ),
            (
                "{{if and .Os .Labels}}y{{end}}{{if or \"\" 0}}n{{else}}m{{end}}",
                "ym",
            ),
            (
                "{{ .Os | printf \"%s!\" }} {{.Labels | len}} {{slice .Os 1 3}}",
                "linux! 2 in",
            ),
            ("{{$x := .Os}}{{$x}} {{$.Name}}", "linux h/r"),
            ("{{/* c */}}a {{- .Os -}} b", "alinuxb"),
            (
                "{{range .Layers}}{{.}}{{break}}{{end}}{{range .Env}}x{{else}}none{{end}}",
                "l1none",
            ),
            ("{{print .Os 1 2}} {{println .Os}}", "linux1 2 linux\n"),
            (
                "{{`raw`}} {{'a'}} {{1.5}} {{0x10}} {{true}}",
                "raw 97 1.5 16 true",
            ),
        ] {
            assert_eq!(run(src).as_deref(), Ok(want), "{src}");
        }
    }

    #[test]
    fn errors_name_the_cause() {
        for (src, why) in [
            ("{{.Digest", "unclosed action"),
            ("{{end}}", "unexpected {{end}}"),
            ("{{if .Os}}", "unexpected EOF"),
            ("{{nope .Os}}", "function \"nope\" not defined"),
            ("{{nil}}", "nil is not a command"),
        ] {
            let e = Template::parse("t", src).unwrap_err();
            assert!(
                e.starts_with("template: t:1: ") && e.contains(why),
                "{src}: {e}"
            );
        }
        for (src, why) in [
            ("{{.Nope}}", "can't evaluate field Nope"),
            ("{{index .Layers 5}}", "index out of range: 5"),
            ("{{range .Os}}{{end}}", "range can't iterate over linux"),
        ] {
            let e = run(src).unwrap_err();
            assert!(e.contains(why), "{src}: {e}");
        }
    }

    #[test]
    fn tabwriter_as_skopeo_leaves_it() {
        assert_eq!(tabwriter_unflushed("linux\n"), "linux\n");
        assert_eq!(tabwriter_unflushed("linux\tamd64\n"), "");
        assert_eq!(
            tabwriter_unflushed("linux\tamd64\nend\n"),
            "linux   amd64\nend\n"
        );
        assert_eq!(
            tabwriter_unflushed("linux\n\tamd64\nend\n"),
            "linux\n        amd64\nend\n"
        );
        assert_eq!(
            tabwriter_unflushed("a\tbbbbbbbbbbbbb\nccc\td\ne\n"),
            "a       bbbbbbbbbbbbb\nccc     d\ne\n"
        );
        assert_eq!(
            tabwriter_unflushed("abcdefghij\tx\ny\n"),
            "abcdefghij  x\ny\n"
        );
        assert_eq!(tabwriter_unflushed("x\nnot ended"), "x\n");
    }
}
