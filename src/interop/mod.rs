//! Other CI systems' formats, to and from cairn's: GitHub Actions workflows imported as
//! pipelines ([`github_import`]) and pipelines exported as workflows ([`github_export`]).
//!
//! Text in, text out: nothing here reads or writes files (the `import` and `export` commands
//! do); the pipeline model comes from the pure core. An imported pipeline is RON written for
//! people, with a comment wherever something was dropped or needs a person's decision.

pub mod github_export;
pub mod github_import;

/// A RON string literal for `s`: a raw string when it spans lines (readable in the file),
/// else an escaped one.
pub fn ron_str(s: &str) -> String {
    if s.contains('\n') {
        let mut hashes = 1;
        while s.contains(&format!("\"{}", "#".repeat(hashes))) {
            hashes += 1;
        }
        let h = "#".repeat(hashes);
        format!("r{h}\"{s}\"{h}")
    } else {
        let mut o = String::from("\"");
        for c in s.chars() {
            match c {
                '"' => o.push_str("\\\""),
                '\\' => o.push_str("\\\\"),
                '\t' => o.push_str("\\t"),
                '\r' => o.push_str("\\r"),
                c if (c as u32) < 0x20 => o.push_str(&format!("\\u{{{:x}}}", c as u32)),
                c => o.push(c),
            }
        }
        o.push('"');
        o
    }
}

/// A RON list of strings.
pub fn ron_list<S: AsRef<str>>(items: impl IntoIterator<Item = S>) -> String {
    let v: Vec<String> = items.into_iter().map(|s| ron_str(s.as_ref())).collect();
    format!("[{}]", v.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_round_trip_through_ron() {
        for s in ["plain", "a \"quoted\" \\ back", "two\nlines \"# end", "tab\there", "bell\u{7}"] {
            let text = format!("({})", ron_str(s));
            let back: (String,) = ron::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(back.0, s);
        }
    }
}
