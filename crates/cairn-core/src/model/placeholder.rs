//! `{placeholders}` in command templates.
//!
//! A placeholder is `{name}` where `name` is letters, digits, `_`, `-` and `.`
//! (`{region}`, `{matrix.otp}`, `{inputs.environment}`). Shell syntax is left alone:
//! `${VAR}` is not a placeholder, and `{{` / `}}` write literal braces.

/// One placeholder found in a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placeholder {
    pub name: String,
    /// Byte offset of the `{` in the template.
    pub offset: usize,
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.'
}

enum Piece<'a> {
    Literal(&'a str),
    Hole(&'a str, usize),
}

/// Split a template into literal text and placeholders, in order.
fn scan<'a>(template: &'a str, mut f: impl FnMut(Piece<'a>)) {
    let mut rest = template;
    let mut base = 0;
    while let Some(i) = rest.find(['{', '}']) {
        let (head, tail) = rest.split_at(i);
        f(Piece::Literal(head));
        let consumed;
        if tail.starts_with("{{") {
            f(Piece::Literal("{"));
            consumed = 2;
        } else if tail.starts_with("}}") {
            f(Piece::Literal("}"));
            consumed = 2;
        } else if tail.starts_with('{') && !head.ends_with('$') {
            let name_len = tail[1..].chars().take_while(|&c| is_name_char(c)).count();
            if name_len > 0 && tail[1 + name_len..].starts_with('}') {
                f(Piece::Hole(&tail[1..1 + name_len], base + i));
                consumed = name_len + 2;
            } else {
                f(Piece::Literal("{"));
                consumed = 1;
            }
        } else {
            f(Piece::Literal(&tail[..1]));
            consumed = 1;
        }
        base += i + consumed;
        rest = &rest[i + consumed..];
    }
    f(Piece::Literal(rest));
}

/// Every placeholder in a template, in order.
pub fn placeholders(template: &str) -> Vec<Placeholder> {
    let mut out = Vec::new();
    scan(template, |piece| {
        if let Piece::Hole(name, offset) = piece {
            out.push(Placeholder { name: name.to_string(), offset });
        }
    });
    out
}

/// Fill a template; `lookup` returns `None` for an unknown name, which is an error naming it.
pub fn render(template: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut missing: Option<String> = None;
    scan(template, |piece| match piece {
        Piece::Literal(lit) => out.push_str(lit),
        Piece::Hole(name, _) => match lookup(name) {
            Some(v) => out.push_str(&v),
            None => {
                missing.get_or_insert_with(|| name.to_string());
            }
        },
    });
    match missing {
        Some(name) => Err(name),
        None => Ok(out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_placeholders_but_not_shell_syntax() {
        let t = "flyctl deploy --app {app}-{region} --config fly.{matrix.otp}.toml ${HOME} {{x}} { y }";
        let names: Vec<_> = placeholders(t).into_iter().map(|p| p.name).collect();
        assert_eq!(names, ["app", "region", "matrix.otp"]);
    }

    #[test]
    fn renders_and_reports_missing() {
        let r = render("a {x} ${Y} {{z}}", |n| (n == "x").then(|| "1".to_string()));
        assert_eq!(r.unwrap(), "a 1 ${Y} {z}");
        assert_eq!(render("{nope}", |_| None).unwrap_err(), "nope");
    }
}
