//! Finding where a name sits in the pipeline's text, so semantic errors can point at it.
//!
//! ron's serde integration gives spans only for syntax and schema errors. For semantic
//! problems (an unknown `needs`, a cycle ...) we search the text: first the definition that
//! owns the problem (`"test":`), then the quoted name after it. Comments are skipped.

/// Maps names and byte offsets of one file to `line:column`.
pub struct Locator<'a> {
    file: &'a str,
    text: &'a [u8],
}

impl<'a> Locator<'a> {
    pub fn new(file: &'a str, text: &'a [u8]) -> Self {
        Locator { file, text }
    }

    pub fn file(&self) -> &str {
        self.file
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        let line_start = before.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
        let col = String::from_utf8_lossy(&before[line_start..]).chars().count() + 1;
        (line, col)
    }

    /// Offset of the first `"needle"` (quoted) at or after `from`, outside comments.
    pub fn find_quoted(&self, needle: &str, from: usize) -> Option<usize> {
        let quoted = format!("\"{needle}\"");
        let q = quoted.as_bytes();
        let mut i = from;
        let t = self.text;
        while i + q.len() <= t.len() {
            if t[i..].starts_with(b"//") {
                while i < t.len() && t[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            if t[i..].starts_with(b"/*") {
                i += 2;
                while i + 1 < t.len() && !t[i..].starts_with(b"*/") {
                    i += 1;
                }
                i += 2;
                continue;
            }
            if t[i..].starts_with(q) {
                return Some(i);
            }
            i += 1;
        }
        None
    }

    /// Offset of the definition `"name":` (a map key), falling back to any quoted occurrence.
    pub fn find_definition(&self, name: &str) -> Option<usize> {
        let mut from = 0;
        while let Some(at) = self.find_quoted(name, from) {
            let after = &self.text[at + name.len() + 2..];
            let next = after.iter().find(|b| !b.is_ascii_whitespace());
            if next == Some(&b':') {
                return Some(at);
            }
            from = at + 1;
        }
        self.find_quoted(name, 0)
    }

    /// Position of `needle` inside the definition of `owner` (or of the owner itself).
    pub fn locate(&self, owner: Option<&str>, needle: &str) -> (usize, usize) {
        let start = owner.and_then(|o| self.find_definition(o)).unwrap_or(0);
        let at = self.find_quoted(needle, start + 1).or_else(|| self.find_quoted(needle, 0)).unwrap_or(start);
        self.line_col(at)
    }

    /// Position of a definition.
    pub fn definition(&self, name: &str) -> (usize, usize) {
        self.line_col(self.find_definition(name).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_definitions_and_uses() {
        let text = b"// \"a\": comment\nsteps: {\n  \"a\": (run: \"x\"),\n  \"b\": (needs: [\"a\"]),\n}";
        let l = Locator::new("p.ron", text);
        assert_eq!(l.definition("a"), (3, 3));
        assert_eq!(l.locate(Some("b"), "a"), (4, 17));
        assert_eq!(l.line_col(0), (1, 1));
    }
}
