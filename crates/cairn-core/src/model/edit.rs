//! Adding declarations to a pipeline's RON text in place, keeping its comments and layout.
//!
//! `cairn learn --apply` adds globs to input sets and values to a step's list fields. Writing
//! the parsed [`Pipeline`](super::Pipeline) back out would drop every comment, so this edits
//! the text: a small scanner that knows RON's strings, raw strings and comments finds
//! `section: { "name": ( field: [ ... ] ) }` and inserts before the list's closing bracket, or
//! adds the field after the entry's opening parenthesis. The caller parses and validates the
//! result before writing it.

/// One token of RON text, with its byte range.
#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Open(char),
    Close(char),
    Str(String),
    Ident(String),
    Colon,
    Comma,
    Other,
}

fn tokens(text: &str) -> Vec<(Tok, usize, usize)> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let start = i;
        match c {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                while i < b.len() {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                continue;
            }
            b'"' => {
                let mut s = String::new();
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    if i < b.len() {
                        s.push(b[i] as char);
                    }
                    i += 1;
                }
                i += 1;
                out.push((Tok::Str(s), start, i));
                continue;
            }
            b'r' if matches!(b.get(i + 1), Some(b'"' | b'#')) => {
                let mut hashes = 0;
                i += 1;
                while b.get(i) == Some(&b'#') {
                    hashes += 1;
                    i += 1;
                }
                i += 1; // the quote
                let body = i;
                let close: Vec<u8> = std::iter::once(b'"').chain(std::iter::repeat_n(b'#', hashes)).collect();
                while i < b.len() && !b[i..].starts_with(&close) {
                    i += 1;
                }
                let s = String::from_utf8_lossy(&b[body..i.min(b.len())]).into_owned();
                i = (i + close.len()).min(b.len());
                out.push((Tok::Str(s), start, i));
                continue;
            }
            b'(' | b'[' | b'{' => out.push((Tok::Open(c as char), i, i + 1)),
            b')' | b']' | b'}' => out.push((Tok::Close(c as char), i, i + 1)),
            b':' => out.push((Tok::Colon, i, i + 1)),
            b',' => out.push((Tok::Comma, i, i + 1)),
            c if c.is_ascii_alphabetic() || c == b'_' => {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                out.push((Tok::Ident(text[start..i].to_string()), start, i));
                continue;
            }
            c if c.is_ascii_whitespace() => {}
            _ => out.push((Tok::Other, i, i + 1)),
        }
        i += 1;
    }
    out
}

/// The index of the token closing the bracket opened at `open`.
fn matching(t: &[(Tok, usize, usize)], open: usize) -> Option<usize> {
    let mut depth = 0;
    for (j, (tok, ..)) in t.iter().enumerate().skip(open) {
        match tok {
            Tok::Open(_) => depth += 1,
            Tok::Close(_) => {
                depth -= 1;
                if depth == 0 {
                    return Some(j);
                }
            }
            _ => {}
        }
    }
    None
}

/// Within tokens `(from, to)` (exclusive, one bracket level), the value token after `key:`
/// at that level.
fn find_key(t: &[(Tok, usize, usize)], from: usize, to: usize, key: &Tok) -> Option<usize> {
    let mut j = from;
    while j < to {
        if &t[j].0 == key && t.get(j + 1).map(|x| &x.0) == Some(&Tok::Colon) {
            return Some(j + 2);
        }
        if matches!(t[j].0, Tok::Open(_)) {
            j = matching(t, j)?;
        }
        j += 1;
    }
    None
}

/// The opening parenthesis of `section: { "name": ( ... ) }` (`section` one level inside
/// `Pipeline(`).
fn entry(t: &[(Tok, usize, usize)], section: &str, name: &str) -> Result<usize, String> {
    let top = t.iter().position(|(x, ..)| matches!(x, Tok::Open('('))).ok_or("no `Pipeline(` found")?;
    let end = matching(t, top).ok_or("unbalanced brackets")?;
    let map = find_key(t, top + 1, end, &Tok::Ident(section.into())).ok_or(format!("no `{section}:` found"))?;
    if t[map].0 != Tok::Open('{') {
        return Err(format!("`{section}:` is not a map"));
    }
    let map_end = matching(t, map).ok_or("unbalanced brackets")?;
    let v = find_key(t, map + 1, map_end, &Tok::Str(name.into())).ok_or(format!("no {name:?} in `{section}`"))?;
    // A step may be written `"name": Step(...)` or `"name": (...)`.
    let v = if matches!(t[v].0, Tok::Ident(_)) { v + 1 } else { v };
    match t.get(v) {
        Some((Tok::Open('('), ..)) => Ok(v),
        _ => Err(format!("{name:?} in `{section}` is not written `(...)`")),
    }
}

/// Add `values` (quoted strings, or a bare value such as `true` when `list` is false) to
/// `field` of entry `name` in `section`; existing values are kept and not repeated.
pub fn add_to_entry(
    text: &str,
    section: &str,
    name: &str,
    field: &str,
    values: &[String],
    list: bool,
) -> Result<String, String> {
    let t = tokens(text);
    let open = entry(&t, section, name)?;
    let close = matching(&t, open).ok_or("unbalanced brackets")?;
    let mut out = text.to_string();
    match find_key(&t, open + 1, close, &Tok::Ident(field.into())) {
        Some(v) if list => {
            if t[v].0 != Tok::Open('[') {
                return Err(format!("`{field}` of {name:?} is not a list"));
            }
            let end = matching(&t, v).ok_or("unbalanced brackets")?;
            let have: Vec<&str> = t[v + 1..end]
                .iter()
                .filter_map(|(x, ..)| match x {
                    Tok::Str(s) => Some(s.as_str()),
                    _ => None,
                })
                .collect();
            let new: Vec<String> =
                values.iter().filter(|v| !have.contains(&v.as_str())).map(|v| format!("{v:?}")).collect();
            if new.is_empty() {
                return Ok(out);
            }
            let joined = new.join(", ");
            if end == v + 1 {
                out.insert_str(t[v].2, &joined);
            } else if t[end - 1].0 == Tok::Comma {
                out.insert_str(t[end - 1].2, &format!(" {joined},"));
            } else {
                out.insert_str(t[end - 1].2, &format!(", {joined}"));
            }
        }
        Some(v) => {
            // A scalar: replace its token.
            let (_, s, e) = &t[v];
            out.replace_range(*s..*e, &values.join(""));
        }
        None => {
            let value = if list {
                format!("[{}]", values.iter().map(|v| format!("{v:?}")).collect::<Vec<_>>().join(", "))
            } else {
                values.join("")
            };
            let empty = close == open + 1;
            let at = t[open].2;
            out.insert_str(at, &format!("{field}: {value}{}", if empty { "" } else { ", " }));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = r##"Pipeline(
    name: "x", // a comment with "quotes" and ( brackets
    input_sets: {
        "elixir": (include: ["lib/**", "config/**"]),
        "empty": (include: []),
    },
    steps: {
        /* steps: { "compile": ( */
        "compile": (
            run: "mix compile", // outputs: [
            input_sets: ["elixir"],
            outputs: [
                "_build/",
            ],
        ),
        "test": (run: r#"echo "(" [ "#),
    },
)"##;

    #[test]
    fn adds_to_lists_and_fields_keeping_comments() {
        let t = add_to_entry(P, "input_sets", "elixir", "include", &["src/**".into(), "lib/**".into()], true).unwrap();
        assert!(t.contains(r#""elixir": (include: ["lib/**", "config/**", "src/**"]),"#), "{t}");
        assert!(t.contains("// a comment with \"quotes\""));
        let t = add_to_entry(&t, "input_sets", "empty", "include", &["priv/**".into()], true).unwrap();
        assert!(t.contains(r#""empty": (include: ["priv/**"]),"#), "{t}");
        let t = add_to_entry(&t, "steps", "compile", "outputs", &["erl_crash.dump".into()], true).unwrap();
        assert!(t.contains("\"_build/\", \"erl_crash.dump\","), "{t}");
        let t = add_to_entry(&t, "steps", "compile", "needs", &["deps".into()], true).unwrap();
        assert!(t.contains(r#""compile": (needs: ["deps"], "#), "{t}");
        let t = add_to_entry(&t, "steps", "test", "network", &["true".into()], false).unwrap();
        assert!(t.contains(r##""test": (network: true, run: r#"echo "(" [ "#),"##), "{t}");
        let t = add_to_entry(&t, "steps", "test", "network", &["false".into()], false).unwrap();
        assert!(t.contains(r#""test": (network: false, run"#), "{t}");
        assert!(add_to_entry(&t, "steps", "nope", "inputs", &["a".into()], true).unwrap_err().contains("no \"nope\""));
        let again = add_to_entry(&t, "steps", "compile", "needs", &["deps".into()], true).unwrap();
        assert_eq!(again, t, "values already there are not repeated");
    }
}
