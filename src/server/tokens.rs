//! Access tokens of `cairn serve`: scopes per namespace, compared in constant time, never logged.
//!
//! The tokens file has one token per line (`#` starts a comment):
//!
//! ```text
//! # scope  namespaces          token (or blake3:<hex of blake3(token)>)
//! write    automata-signal     ci-main-2f9c...
//! read     automata-signal,web blake3:9a0c...
//! read     *                   dev-laptops-7d1e...
//! ```
//!
//! `write` implies `read`. Tokens are kept only as blake3 digests in memory; a presented token
//! is hashed and compared with every entry in constant time.

use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    Read,
    Write,
}

#[derive(Debug, Clone)]
struct TokenEntry {
    digest: [u8; 32],
    scope: Scope,
    namespaces: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Tokens {
    entries: Vec<TokenEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// No or unknown token.
    Unauthenticated,
    /// A known token without the needed scope for this namespace.
    Forbidden,
    Granted,
}

fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut diff = 0u8;
    for i in 0..32 {
        diff |= a[i] ^ b[i];
    }
    diff == 0
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
        let hi = (chunk[0] as char).to_digit(16)?;
        let lo = (chunk[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

impl Tokens {
    pub fn parse(text: &str, file: &str) -> Result<Tokens, String> {
        let mut entries = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let parts: Vec<&str> = line.split_whitespace().collect();
            let [scope, namespaces, token] = parts.as_slice() else {
                return Err(format!("{file}:{}: expected `SCOPE NAMESPACES TOKEN` (scope read or write)", n + 1));
            };
            let scope = match *scope {
                "read" => Scope::Read,
                "write" => Scope::Write,
                other => return Err(format!("{file}:{}: unknown scope `{other}`; use read or write", n + 1)),
            };
            let digest = match token.strip_prefix("blake3:") {
                Some(hex) => unhex(hex).ok_or_else(|| format!("{file}:{}: `blake3:` needs 64 hex digits", n + 1))?,
                None if token.len() < 16 => {
                    return Err(format!("{file}:{}: tokens must be at least 16 characters", n + 1));
                }
                None => *blake3::hash(token.as_bytes()).as_bytes(),
            };
            entries.push(TokenEntry { digest, scope, namespaces: namespaces.split(',').map(String::from).collect() });
        }
        Ok(Tokens { entries })
    }

    pub fn load(path: &Path) -> Result<Tokens, String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("cannot read tokens file {}: {e}", path.display()))?;
        Tokens::parse(&text, &path.display().to_string())
    }

    /// May `token` do `need` in `namespace`?
    pub fn check(&self, token: Option<&str>, namespace: &str, need: Scope) -> Access {
        let Some(token) = token else { return Access::Unauthenticated };
        let presented = *blake3::hash(token.as_bytes()).as_bytes();
        let mut known = false;
        let mut granted = false;
        // Visit every entry whatever matches, so timing does not reveal which one did.
        for e in &self.entries {
            let same = ct_eq(&e.digest, &presented);
            known |= same;
            let ns_ok = e.namespaces.iter().any(|n| n == "*" || n == namespace);
            granted |= same && ns_ok && e.scope >= need;
        }
        match (known, granted) {
            (_, true) => Access::Granted,
            (true, false) => Access::Forbidden,
            (false, _) => Access::Unauthenticated,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_and_namespaces() {
        let hashed = blake3::hash(b"hashed-token-123456").to_hex().to_string();
        let t = Tokens::parse(
            &format!("write app ci-token-0123456789\nread app,web reader-token-0123456\nread * blake3:{hashed}\n"),
            "tokens",
        )
        .unwrap();
        assert_eq!(t.check(Some("ci-token-0123456789"), "app", Scope::Write), Access::Granted);
        assert_eq!(t.check(Some("ci-token-0123456789"), "app", Scope::Read), Access::Granted);
        assert_eq!(t.check(Some("ci-token-0123456789"), "other", Scope::Read), Access::Forbidden);
        assert_eq!(t.check(Some("reader-token-0123456"), "web", Scope::Write), Access::Forbidden);
        assert_eq!(t.check(Some("hashed-token-123456"), "anything", Scope::Read), Access::Granted);
        assert_eq!(t.check(Some("nope-nope-nope-nope"), "app", Scope::Read), Access::Unauthenticated);
        assert_eq!(t.check(None, "app", Scope::Read), Access::Unauthenticated);
        assert!(Tokens::parse("admin * x", "f").unwrap_err().contains("f:1"));
    }
}
