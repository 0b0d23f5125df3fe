//! ed25519 signing keys for remote cache entries, as Nix binary caches do: CI signs with a
//! private key; every reader verifies against public keys the pipeline trusts.
//!
//! - private key file: `cairn-ed25519-secret:NAME:BASE64(32 bytes)` (mode 0600)
//! - public key, as written in a pipeline's `remote.trusted_keys`: `NAME:BASE64(32 bytes)`
//!
//! The signed message binds the step key (itself the hash of the key manifest), the blob's
//! digest, the outputs digest, the log size and the recorded duration.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

const SECRET_PREFIX: &str = "cairn-ed25519-secret:";

pub fn b64(data: &[u8]) -> String {
    crate::encoding::base64(data)
}

pub fn unb64(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let s = s.trim().trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let bytes = s.as_bytes();
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= val(c)? << (18 - 6 * i);
        }
        out.push((n >> 16) as u8);
        if chunk.len() > 2 {
            out.push((n >> 8) as u8);
        }
        if chunk.len() > 3 {
            out.push(n as u8);
        }
        if chunk.len() == 1 {
            return None;
        }
    }
    Some(out)
}

/// The message a signature covers.
pub fn message(key: &str, blob_digest: &str, outputs_digest: &str, log_bytes: u64, duration_ms: u64) -> Vec<u8> {
    format!("cairn-entry-v1\n{key}\n{blob_digest}\n{outputs_digest}\n{log_bytes}\n{duration_ms}\n").into_bytes()
}

pub struct Secret {
    pub name: String,
    key: SigningKey,
}

impl Secret {
    /// A key from 32 random bytes (the caller draws them: randomness is an effect).
    pub fn from_seed(name: &str, seed: [u8; 32]) -> Secret {
        Secret { name: name.to_string(), key: SigningKey::from_bytes(&seed) }
    }

    pub fn parse(text: &str) -> Result<Secret, String> {
        let rest = text
            .trim()
            .strip_prefix(SECRET_PREFIX)
            .ok_or("not a cairn private key (cairn keys generate writes one)")?;
        let (name, data) = rest.rsplit_once(':').ok_or("malformed private key")?;
        let bytes: [u8; 32] = unb64(data).and_then(|b| b.try_into().ok()).ok_or("malformed private key")?;
        Ok(Secret { name: name.to_string(), key: SigningKey::from_bytes(&bytes) })
    }

    pub fn to_file_text(&self) -> String {
        format!("{SECRET_PREFIX}{}:{}\n", self.name, b64(&self.key.to_bytes()))
    }

    pub fn public(&self) -> String {
        format!("{}:{}", self.name, b64(self.key.verifying_key().as_bytes()))
    }

    /// `NAME:BASE64(signature)`
    pub fn sign(&self, msg: &[u8]) -> String {
        format!("{}:{}", self.name, b64(&self.key.sign(msg).to_bytes()))
    }
}

/// Public keys a reader trusts.
#[derive(Clone, Default)]
pub struct Trusted {
    keys: Vec<(String, VerifyingKey)>,
}

impl Trusted {
    pub fn parse(list: &[String]) -> Result<Trusted, String> {
        let mut keys = Vec::new();
        for k in list {
            let (name, data) = k.rsplit_once(':').ok_or_else(|| format!("trusted key `{k}` is not NAME:BASE64"))?;
            let bytes: [u8; 32] = unb64(data)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| format!("trusted key `{name}` is not 32 bytes of base64"))?;
            let vk = VerifyingKey::from_bytes(&bytes).map_err(|e| format!("trusted key `{name}`: {e}"))?;
            keys.push((name.to_string(), vk));
        }
        Ok(Trusted { keys })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Check `NAME:BASE64(sig)` over `msg`.
    pub fn verify(&self, signature: Option<&str>, msg: &[u8]) -> Result<(), String> {
        let sig = signature.ok_or("the entry is not signed")?;
        let (name, data) = sig.rsplit_once(':').ok_or("malformed signature")?;
        let (_, vk) =
            self.keys.iter().find(|(n, _)| n == name).ok_or_else(|| format!("signed by untrusted key `{name}`"))?;
        let bytes: [u8; 64] = unb64(data).and_then(|b| b.try_into().ok()).ok_or("malformed signature")?;
        vk.verify(msg, &Signature::from_bytes(&bytes)).map_err(|_| format!("bad signature from key `{name}`"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_round_trip() {
        let s = Secret::from_seed("ci", [7; 32]);
        let again = Secret::parse(&s.to_file_text()).unwrap();
        assert_eq!(again.public(), s.public());
        let t = Trusted::parse(&[s.public()]).unwrap();
        let msg = message("k", "b", "o", 1, 2);
        let sig = s.sign(&msg);
        assert!(t.verify(Some(&sig), &msg).is_ok());
        assert!(t.verify(Some(&sig), &message("k", "TAMPERED", "o", 1, 2)).unwrap_err().contains("bad signature"));
        assert!(t.verify(None, &msg).is_err());
        let other = Secret::from_seed("rogue", [9; 32]);
        assert!(t.verify(Some(&other.sign(&msg)), &msg).unwrap_err().contains("untrusted"));
        assert_eq!(unb64(&b64(b"hello!?")).unwrap(), b"hello!?");
    }
}
