//! Finding the cluster's auth token the way Ray's own tools do.

use super::RayError;
use std::path::{Path, PathBuf};

/// The token itself.
pub const ENV_TOKEN: &str = "RAY_AUTH_TOKEN";
/// A file holding the token.
pub const ENV_TOKEN_PATH: &str = "RAY_AUTH_TOKEN_PATH";

/// Where a token came from, for log lines (never the token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    File(PathBuf),
    Env,
}

impl std::fmt::Display for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenSource::File(p) => write!(f, "file {}", p.display()),
            TokenSource::Env => write!(f, "${ENV_TOKEN}"),
        }
    }
}

/// A bearer token. `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    pub(super) secret: String,
    pub source: TokenSource,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token(from {})", self.source)
    }
}

impl Token {
    pub fn new(secret: impl Into<String>, source: TokenSource) -> Token {
        Token {
            secret: secret.into(),
            source,
        }
    }

    /// Reads a token file (surrounding whitespace is dropped).
    pub fn from_file(path: &Path) -> Result<Token, RayError> {
        let text = std::fs::read_to_string(path).map_err(|e| RayError::Token {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let secret = text.trim();
        if secret.is_empty() {
            return Err(RayError::Token {
                path: path.to_path_buf(),
                message: "the file is empty".into(),
            });
        }
        Ok(Token::new(secret, TokenSource::File(path.to_path_buf())))
    }

    /// Ray's lookup order: `explicit` (`--ray-token-file`) first, then
    /// `RAY_AUTH_TOKEN`, then the file named by `RAY_AUTH_TOKEN_PATH`, then
    /// `~/.ray/auth_token`. `None` when none is set (a cluster without auth).
    /// A file that is named but unreadable is an error, not "no token".
    pub fn discover(explicit: Option<&Path>) -> Result<Option<Token>, RayError> {
        Self::discover_in(explicit, |k| std::env::var(k).ok())
    }

    fn discover_in(
        explicit: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Token>, RayError> {
        if let Some(p) = explicit {
            return Token::from_file(p).map(Some);
        }
        if let Some(t) = env(ENV_TOKEN).filter(|t| !t.trim().is_empty()) {
            return Ok(Some(Token::new(t.trim(), TokenSource::Env)));
        }
        if let Some(p) = env(ENV_TOKEN_PATH).filter(|p| !p.is_empty()) {
            return Token::from_file(Path::new(&p)).map(Some);
        }
        if let Some(home) = env("HOME").filter(|h| !h.is_empty()) {
            let p = Path::new(&home).join(".ray/auth_token");
            if p.exists() {
                return Token::from_file(&p).map(Some);
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn follows_rays_lookup_order() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        std::fs::create_dir_all(home.join(".ray")).unwrap();
        std::fs::write(home.join(".ray/auth_token"), "from-home\n").unwrap();
        let file = dir.path().join("tok");
        std::fs::write(&file, "  from-path \n").unwrap();
        let h = home.to_str().unwrap();
        let f = file.to_str().unwrap();

        let t = Token::discover_in(None, env(&[("HOME", h)]))
            .unwrap()
            .unwrap();
        assert_eq!(t.secret, "from-home");
        let t = Token::discover_in(None, env(&[("HOME", h), (ENV_TOKEN_PATH, f)]))
            .unwrap()
            .unwrap();
        assert_eq!(t.secret, "from-path");
        let t = Token::discover_in(
            None,
            env(&[("HOME", h), (ENV_TOKEN_PATH, f), (ENV_TOKEN, "direct")]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (t.secret.as_str(), &t.source),
            ("direct", &TokenSource::Env)
        );
        let t = Token::discover_in(Some(&file), env(&[(ENV_TOKEN, "direct")]))
            .unwrap()
            .unwrap();
        assert_eq!(t.secret, "from-path");
        assert!(
            !format!("{t:?}").contains("from-path"),
            "Debug leaks the token"
        );
    }

    #[test]
    fn no_token_and_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let h = dir.path().to_str().unwrap();
        assert!(
            Token::discover_in(None, env(&[("HOME", h)]))
                .unwrap()
                .is_none()
        );
        let err =
            Token::discover_in(None, env(&[(ENV_TOKEN_PATH, "/nonexistent/tok")])).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/tok"), "{err}");
    }
}
