//! Secrets at rest and in use: sealed with a key only the operator holds,
//! opened by the process that runs a granted task, and kept out of
//! everything else.
//!
//! A secret is sealed with ChaCha20-Poly1305 (`ring`) under the key in
//! `WASMQ_SECRET_KEY_FILE`, with a fresh random nonce and the secret's name
//! as associated data, so a sealed value copied to another name does not
//! open. The database holds only the sealed bytes and the key's id (a hash
//! of the key, so that a value sealed under another key is named as such).
//!
//! The store knows nothing of this module: it keeps bytes. The client seals
//! (`wasmq secret set`), a worker or a Ray job's runner opens, right before a
//! run, the secrets the task's module was granted ([`crate::worker`]).
//! [`Redactor`] takes the values back out of whatever the guest produced.

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::Arc;
use zeroize::Zeroizing;

/// The environment variable naming the key file.
pub const KEY_FILE_ENV: &str = "WASMQ_SECRET_KEY_FILE";
/// Largest secret value.
pub const MAX_SECRET_BYTES: usize = 64 * 1024;
/// Values shorter than this are not searched for in guest text: a
/// two-character secret would redact half the logs, and is no secret.
pub const MIN_REDACTED_LEN: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error(
        "no secret key: set {KEY_FILE_ENV} to a file holding 32 random bytes (`wasmq secret new-key FILE` makes one)"
    )]
    NoKey,
    #[error("{KEY_FILE_ENV} {path}: {why}")]
    BadKey { path: String, why: String },
    #[error("secret {name} is sealed under key {sealed_with}, not this process's key {have}")]
    WrongKey {
        name: String,
        sealed_with: String,
        have: String,
    },
    #[error("secret {0} does not open: it was altered, or sealed under another name")]
    Tampered(String),
    #[error("a secret value must be UTF-8 text of at most {MAX_SECRET_BYTES} bytes")]
    BadValue,
}

/// The operator's key.
pub struct SecretKey {
    key: LessSafeKey,
    id: String,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretKey").field("id", &self.id).finish()
    }
}

/// A sealed value as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sealed {
    pub key_id: String,
    pub nonce: Vec<u8>,
    /// The ciphertext and its tag.
    pub ciphertext: Vec<u8>,
}

impl SecretKey {
    /// The key `WASMQ_SECRET_KEY_FILE` names, if it is set.
    pub fn from_env() -> Result<Option<SecretKey>, SecretError> {
        match std::env::var_os(KEY_FILE_ENV) {
            Some(path) if !path.is_empty() => SecretKey::from_file(Path::new(&path)).map(Some),
            _ => Ok(None),
        }
    }

    /// A key file holds 32 bytes: raw, or as 64 hex digits (surrounding
    /// whitespace ignored).
    pub fn from_file(path: &Path) -> Result<SecretKey, SecretError> {
        let bad = |why: String| SecretError::BadKey {
            path: path.display().to_string(),
            why,
        };
        let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| bad(e.to_string()))?);
        let text = std::str::from_utf8(&bytes).map(str::trim).unwrap_or("");
        let key: Zeroizing<Vec<u8>> = if text.len() == 64 {
            Zeroizing::new(hex::decode(text).map_err(|_| bad("64 characters, but not hex".into()))?)
        } else if bytes.len() == 32 {
            bytes.clone()
        } else {
            return Err(bad(format!(
                "{} bytes; a key is 32 raw bytes or 64 hex digits",
                bytes.len()
            )));
        };
        SecretKey::from_bytes(&key).map_err(bad)
    }

    fn from_bytes(key: &[u8]) -> Result<SecretKey, String> {
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, key)
            .map_err(|_| "not a 32-byte key".to_string())?;
        let digest = Sha256::digest([b"wasmq-secret-key-id:".as_slice(), key].concat());
        Ok(SecretKey {
            key: LessSafeKey::new(unbound),
            id: hex::encode(&digest[..8]),
        })
    }

    /// 32 random bytes as 64 hex digits, for a new key file.
    pub fn generate_hex() -> Zeroizing<String> {
        let mut key = Zeroizing::new([0u8; 32]);
        SystemRandom::new()
            .fill(&mut key[..])
            .expect("the system's random source");
        Zeroizing::new(hex::encode(&key[..]))
    }

    /// The key's public name: 16 hex digits of a hash of it.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn seal(&self, name: &str, value: &str) -> Result<Sealed, SecretError> {
        if value.len() > MAX_SECRET_BYTES {
            return Err(SecretError::BadValue);
        }
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .expect("the system's random source");
        let mut buf = value.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(name)),
                &mut buf,
            )
            .expect("sealing cannot fail for a value of this size");
        Ok(Sealed {
            key_id: self.id.clone(),
            nonce: nonce.to_vec(),
            ciphertext: buf,
        })
    }

    pub fn open(&self, name: &str, sealed: &Sealed) -> Result<SecretValue, SecretError> {
        if sealed.key_id != self.id {
            return Err(SecretError::WrongKey {
                name: name.to_string(),
                sealed_with: sealed.key_id.clone(),
                have: self.id.clone(),
            });
        }
        let nonce = Nonce::try_assume_unique_for_key(&sealed.nonce)
            .map_err(|_| SecretError::Tampered(name.to_string()))?;
        let mut buf = Zeroizing::new(sealed.ciphertext.clone());
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad(name)), &mut buf)
            .map_err(|_| SecretError::Tampered(name.to_string()))?;
        let text = std::str::from_utf8(plain).map_err(|_| SecretError::BadValue)?;
        Ok(SecretValue(Zeroizing::new(text.to_string())))
    }
}

fn aad(name: &str) -> Vec<u8> {
    [b"wasmq-secret:v1:".as_slice(), name.as_bytes()].concat()
}

/// An opened secret: shown as `[secret]` by `Debug`, wiped when dropped.
#[derive(Clone)]
pub struct SecretValue(Zeroizing<String>);

impl SecretValue {
    /// The value, for the one place that hands it to the guest.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[secret]")
    }
}

/// Checks a value before it is sealed: UTF-8 (the guest reads strings),
/// at most [`MAX_SECRET_BYTES`], not empty. A trailing newline, as `echo`
/// and editors add, is not part of it.
pub fn value_from_bytes(bytes: Vec<u8>) -> Result<Zeroizing<String>, SecretError> {
    let mut text = Zeroizing::new(String::from_utf8(bytes).map_err(|e| {
        let _wipe = Zeroizing::new(e.into_bytes());
        SecretError::BadValue
    })?);
    while text.ends_with('\n') || text.ends_with('\r') {
        text.pop();
    }
    if text.is_empty() || text.len() > MAX_SECRET_BYTES {
        return Err(SecretError::BadValue);
    }
    Ok(text)
}

/// Replaces the values of a run's secrets in text the guest produced with
/// `[redacted:NAME]`: a guest that logs, prints, fails with or returns a
/// secret does not put it in a task row, an attempt row, a log line, or a
/// Ray job's logs.
#[derive(Clone, Default)]
pub struct Redactor {
    /// (value, name), longest value first, so that a secret containing
    /// another is replaced whole.
    values: Arc<Vec<(SecretValue, String)>>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field("secrets", &self.values.len())
            .finish()
    }
}

/// The ways a value can appear in guest text: as it is, and inside a JSON
/// string as encoders write it (a value holding `"`, `\` or a control
/// character is escaped; Python's `json.dumps` also writes every non-ASCII
/// character as `\uXXXX`). A guest that returns its token in a JSON
/// field must not get it past the redaction by the escaping alone.
fn spellings(value: &SecretValue) -> Vec<SecretValue> {
    use std::fmt::Write as _;
    let raw = value.expose();
    let mut json = Zeroizing::new(String::with_capacity(raw.len() + 8));
    let mut ascii = Zeroizing::new(String::with_capacity(raw.len() + 8));
    for c in raw.chars() {
        let short = match c {
            '"' => Some("\\\""),
            '\\' => Some("\\\\"),
            '\n' => Some("\\n"),
            '\r' => Some("\\r"),
            '\t' => Some("\\t"),
            '\u{8}' => Some("\\b"),
            '\u{c}' => Some("\\f"),
            _ => None,
        };
        match short {
            Some(s) => {
                json.push_str(s);
                ascii.push_str(s);
            }
            None if c < ' ' => {
                let _ = write!(json, "\\u{:04x}", c as u32);
                let _ = write!(ascii, "\\u{:04x}", c as u32);
            }
            None if c.is_ascii() => {
                json.push(c);
                ascii.push(c);
            }
            None => {
                json.push(c);
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(ascii, "\\u{unit:04x}");
                }
            }
        }
    }
    let mut out = vec![value.clone()];
    for spelled in [json, ascii] {
        if out.iter().all(|v| v.expose() != spelled.as_str()) {
            out.push(SecretValue(spelled));
        }
    }
    out
}

impl Redactor {
    pub fn new(secrets: &[(String, SecretValue)]) -> Redactor {
        let mut values: Vec<(SecretValue, String)> = secrets
            .iter()
            .filter(|(_, v)| v.expose().len() >= MIN_REDACTED_LEN)
            .flat_map(|(n, v)| spellings(v).into_iter().map(move |s| (s, n.clone())))
            .collect();
        values.sort_by_key(|(v, _)| std::cmp::Reverse(v.expose().len()));
        Redactor {
            values: Arc::new(values),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// `text` with every secret value replaced, and a tail that is the
    /// start of one (text cut at a size cap) too; unchanged (not copied)
    /// when it holds none.
    pub fn redact<'a>(&self, text: &'a str) -> std::borrow::Cow<'a, str> {
        let mut out = std::borrow::Cow::Borrowed(text);
        for (value, name) in self.values.iter() {
            if out.contains(value.expose()) {
                out = std::borrow::Cow::Owned(
                    out.replace(value.expose(), &format!("[redacted:{name}]")),
                );
            }
        }
        for (value, name) in self.values.iter() {
            let value = value.expose();
            // The longest tail of `out` that starts `value`.
            let cut = (MIN_REDACTED_LEN..value.len().min(out.len() + 1))
                .rev()
                .find(|&n| value.is_char_boundary(n) && out.ends_with(&value[..n]));
            if let Some(n) = cut {
                let keep = out.len() - n;
                out = std::borrow::Cow::Owned(format!("{}[redacted:{name}]", &out[..keep]));
                break;
            }
        }
        out
    }

    /// [`Redactor::redact`] in place.
    pub fn redact_string(&self, text: &mut String) {
        if let std::borrow::Cow::Owned(clean) = self.redact(text) {
            *text = clean;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> SecretKey {
        SecretKey::from_bytes(&[byte; 32]).unwrap()
    }

    #[test]
    fn a_sealed_value_opens_under_its_key_and_name_only() {
        let k = key(1);
        let sealed = k.seal("api-token", "s3cr3t-value").unwrap();
        assert!(
            !sealed.ciphertext.windows(6).any(|w| w == b"s3cr3t"),
            "not in clear"
        );
        assert_eq!(
            k.open("api-token", &sealed).unwrap().expose(),
            "s3cr3t-value"
        );
        // Another name, another key, a flipped bit: refused.
        assert!(matches!(
            k.open("other", &sealed),
            Err(SecretError::Tampered(_))
        ));
        assert!(matches!(
            key(2).open("api-token", &sealed),
            Err(SecretError::WrongKey { .. })
        ));
        let mut bad = sealed.clone();
        bad.ciphertext[0] ^= 1;
        assert!(matches!(
            k.open("api-token", &bad),
            Err(SecretError::Tampered(_))
        ));
        // Two seals of one value differ (fresh nonces).
        assert_ne!(k.seal("api-token", "s3cr3t-value").unwrap(), sealed);
    }

    #[test]
    fn key_files_hold_32_bytes_raw_or_in_hex() {
        let dir = tempfile::tempdir().unwrap();
        let hex_file = dir.path().join("hex");
        std::fs::write(
            &hex_file,
            format!("{}\n", SecretKey::generate_hex().as_str()),
        )
        .unwrap();
        let raw_file = dir.path().join("raw");
        std::fs::write(&raw_file, [7u8; 32]).unwrap();
        assert_eq!(SecretKey::from_file(&raw_file).unwrap().id(), key(7).id());
        let k = SecretKey::from_file(&hex_file).unwrap();
        assert_eq!(k.id().len(), 16);
        let short = dir.path().join("short");
        std::fs::write(&short, "abc").unwrap();
        let e = SecretKey::from_file(&short).unwrap_err().to_string();
        assert!(e.contains("32 raw bytes or 64 hex digits"), "{e}");
        assert!(!format!("{k:?}").contains(&hex::encode([7u8; 32])));
    }

    #[test]
    fn values_are_text_without_the_final_newline() {
        assert_eq!(value_from_bytes(b"tok\n".to_vec()).unwrap().as_str(), "tok");
        assert!(value_from_bytes(vec![0xff]).is_err());
        assert!(value_from_bytes(b"\n".to_vec()).is_err());
        assert!(value_from_bytes(vec![b'a'; MAX_SECRET_BYTES + 1]).is_err());
    }

    #[test]
    fn redaction_replaces_every_value_longest_first() {
        let v = |s: &str| SecretValue(Zeroizing::new(s.to_string()));
        let r = Redactor::new(&[
            ("short".into(), v("abc")),
            ("token".into(), v("tok-123")),
            ("long".into(), v("tok-123-xyz")),
        ]);
        assert_eq!(
            r.redact("a tok-123 b tok-123-xyz c abc"),
            "a [redacted:token] b [redacted:long] c abc"
        );
        assert!(matches!(r.redact("clean"), std::borrow::Cow::Borrowed(_)));
        // Cut at a cap in the middle of a value: the start goes too.
        assert_eq!(r.redact("out: tok-12"), "out: [redacted:long]");
        assert_eq!(r.redact("out: tok"), "out: tok", "shorter than the minimum");
        assert_eq!(format!("{:?}", v("tok-123")), "[secret]");
    }

    #[test]
    fn redaction_finds_values_escaped_inside_json_strings() {
        let v = |s: &str| SecretValue(Zeroizing::new(s.to_string()));
        let token = "p\"a\\ss\n\u{1}wörd";
        let r = Redactor::new(&[("pw".into(), v(token))]);
        // As serde_json, JSON.stringify and Python's json.dumps write it.
        let rust = serde_json::to_string(&serde_json::json!({ "t": token })).unwrap();
        assert_eq!(r.redact(&rust), r#"{"t":"[redacted:pw]"}"#);
        let python = r#"{"t": "p\"a\\ss\n\u0001w\u00f6rd"}"#;
        assert_eq!(r.redact(python), r#"{"t": "[redacted:pw]"}"#);
        assert_eq!(r.redact(token), "[redacted:pw]");
        // Outside the Basic Multilingual Plane: a surrogate pair.
        let r = Redactor::new(&[("e".into(), v("key-\u{1F511}"))]);
        assert_eq!(r.redact(r#""key-\ud83d\udd11""#), r#""[redacted:e]""#);
    }
}
