//! Secrets: resolving values from their providers, and masking them in everything printed
//! or stored.
//!
//! A value is masked as itself, each of its lines (for multi-line values such as keys), its
//! base64 and its URL-encoded forms. Fragments shorter than [`MIN_MASK_LEN`] are not masked
//! on their own, so a one-character line doesn't blank out the log.

use crate::model::SecretSource;
use std::path::Path;

pub const MIN_MASK_LEN: usize = 4;
pub const MASK: &str = "***";

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("secret `{name}` is missing: environment variable `{var}` is not set\n  hint: export {var}=..., or change where `{name}` comes from in the pipeline's `secrets`")]
    EnvMissing { name: String, var: String },
    #[error("secret `{name}` is missing: cannot read file `{path}`: {source}\n  hint: create the file, or change where `{name}` comes from")]
    File { name: String, path: String, source: std::io::Error },
    #[error("secret `{name}`: command `{command}` failed ({status})\n  hint: run the command by hand to see why")]
    Command { name: String, command: String, status: String },
    #[error("secret `{name}` uses `Inherit`, but the pipeline does not define it")]
    Inherit { name: String },
}

/// Fetch a secret's value.
pub fn resolve(name: &str, source: &SecretSource, root: &Path) -> Result<String, SecretError> {
    match source {
        SecretSource::Env(var) => match std::env::var(var) {
            Ok(v) if !v.is_empty() => Ok(v),
            _ => Err(SecretError::EnvMissing { name: name.into(), var: var.clone() }),
        },
        SecretSource::File(path) => std::fs::read_to_string(root.join(path))
            .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
            .map_err(|source| SecretError::File { name: name.into(), path: path.clone(), source }),
        SecretSource::Command(command) => {
            let out = super::process::capture(command, root, true).map_err(|e| SecretError::Command {
                name: name.into(),
                command: command.clone(),
                status: e.to_string(),
            })?;
            if !out.status.success() {
                return Err(SecretError::Command {
                    name: name.into(),
                    command: command.clone(),
                    status: out.status.to_string(),
                });
            }
            Ok(String::from_utf8_lossy(&out.stdout).trim_end_matches(['\n', '\r']).to_string())
        }
        SecretSource::Inherit => Err(SecretError::Inherit { name: name.into() }),
    }
}

pub use cairn_core::encoding::{base64, url_encode};

/// Replaces every known secret form with `***`.
#[derive(Debug, Clone, Default)]
pub struct Masker {
    patterns: Vec<String>,
}

impl Masker {
    pub fn new<'a>(values: impl IntoIterator<Item = &'a str>) -> Masker {
        let mut patterns = Vec::new();
        for v in values {
            let json = serde_json::to_string(v).unwrap_or_default();
            let json_escaped = json.trim_matches('"').to_string();
            let mut forms = vec![v.to_string(), base64(v.as_bytes()), url_encode(v), json_escaped];
            // base64 without padding, as many tools print it
            forms.push(base64(v.as_bytes()).trim_end_matches('=').to_string());
            // hex, as `xxd -p` or `od` print it, in both cases
            let hex: String = v.bytes().map(|b| format!("{b:02x}")).collect();
            forms.push(hex.to_uppercase());
            forms.push(hex);
            // `echo "$S" | base64` encodes the newline too, and wraps its output at 76 columns
            // (`openssl base64` at 64): each wrapped line is masked on its own.
            for encoded in [base64(v.as_bytes()), base64(format!("{v}\n").as_bytes())] {
                for width in [76, 64] {
                    if encoded.len() > width {
                        forms.extend(encoded.as_bytes().chunks(width).map(|c| String::from_utf8_lossy(c).into_owned()));
                    }
                }
                forms.push(encoded);
            }
            for line in v.lines() {
                forms.push(line.trim_end_matches('\r').to_string());
                forms.push(base64(line.as_bytes()));
            }
            for f in forms {
                if f.len() >= MIN_MASK_LEN && !patterns.contains(&f) {
                    patterns.push(f);
                }
            }
        }
        // Longest first, so a value is masked whole before its fragments.
        patterns.sort_by_key(|p| std::cmp::Reverse(p.len()));
        Masker { patterns }
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Does `bytes` hold any form of a secret? (Scanning outputs before they are stored.)
    pub fn found_in(&self, bytes: &[u8]) -> bool {
        self.patterns.iter().any(|p| memchr::memmem::find(bytes, p.as_bytes()).is_some())
    }

    pub fn mask(&self, text: &str) -> String {
        let mut out = text.to_string();
        for p in &self.patterns {
            if out.contains(p.as_str()) {
                out = out.replace(p.as_str(), MASK);
            }
        }
        out
    }

    /// Mask every string (and object key) inside a JSON value.
    pub fn mask_json(&self, v: &mut serde_json::Value) {
        if self.patterns.is_empty() {
            return;
        }
        match v {
            serde_json::Value::String(s) => *s = self.mask(s),
            serde_json::Value::Array(a) => a.iter_mut().for_each(|x| self.mask_json(x)),
            serde_json::Value::Object(o) => {
                let entries: Vec<(String, serde_json::Value)> = std::mem::take(o).into_iter().collect();
                for (k, mut x) in entries {
                    self.mask_json(&mut x);
                    o.insert(self.mask(&k), x);
                }
            }
            _ => {}
        }
    }

    pub fn mask_bytes(&self, bytes: &[u8]) -> Vec<u8> {
        if self.patterns.is_empty() {
            return bytes.to_vec();
        }
        self.mask(&String::from_utf8_lossy(bytes)).into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_value_lines_and_encodings() {
        let m = Masker::new(["s3cr3t-value/x", "line-one\nline-two\nab"]);
        assert_eq!(m.mask("token=s3cr3t-value/x!"), "token=***!");
        assert_eq!(m.mask(&base64(b"s3cr3t-value/x")), "***");
        assert_eq!(m.mask("u=s3cr3t-value%2Fx"), "u=***");
        assert_eq!(m.mask("got line-two here"), "got *** here");
        assert_eq!(m.mask("ab stays"), "ab stays", "short fragments are not masked alone");
        assert_eq!(base64(b"hello"), "aGVsbG8=");
        assert_eq!(m.mask("hex 73336372337400"), "hex 73336372337400", "not a whole secret");
        assert_eq!(m.mask(&"s3cr3t-value/x".bytes().map(|b| format!("{b:02x}")).collect::<String>()), "***");
        assert_eq!(m.mask(&base64(b"s3cr3t-value/x\n")), "***", "echo | base64");
        let long = "k".repeat(120);
        let m = Masker::new([long.as_str()]);
        for line in base64(long.as_bytes()).as_bytes().chunks(76) {
            assert_eq!(m.mask(std::str::from_utf8(line).unwrap()), "***", "wrapped base64 lines");
        }
        assert!(m.found_in(format!("x{long}y").as_bytes()) && !m.found_in(b"nothing"));
    }
}
