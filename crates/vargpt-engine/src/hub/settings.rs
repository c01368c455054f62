//! The hub client's settings from the standard Hugging Face environment variables,
//! read through a lookup function so they can be tested without touching the
//! process environment.
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `HF_TOKEN` (else `HUGGING_FACE_HUB_TOKEN`) | access token for gated / private models | the token file |
//! | `HF_TOKEN_PATH` | token file | `$HF_HOME/token` |
//! | `HF_ENDPOINT` | hub URL (a mirror) | `https://huggingface.co` |
//! | `HF_HOME` | root of the hub's files | `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface` |
//! | `HF_HUB_CACHE` | model cache | `$HF_HOME/hub` |
//! | `HF_HUB_OFFLINE` | never touch the network | off |
//! | `HF_HUB_DISABLE_PROGRESS_BARS` | log progress lines even on a terminal | off |

use std::fmt;
use std::path::PathBuf;

/// The public hub.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// An access token. Its `Debug` and `Display` never show the value, so settings
/// can be logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// A token from its text (trimmed); None when empty.
    pub fn new(text: &str) -> Option<Self> {
        let t = text.trim();
        (!t.is_empty()).then(|| Self(t.to_string()))
    }
    /// The secret itself, for the request header only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// What the hub client is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubSettings {
    /// Hub URL, without a trailing `/`.
    pub endpoint: String,
    /// Model cache (hf-hub's `models--owner--name/snapshots/...` layout).
    pub cache_dir: PathBuf,
    /// Token from the environment, if any.
    pub token: Option<Token>,
    /// Token file read when no token variable is set.
    pub token_path: PathBuf,
    /// Resolve from the cache only.
    pub offline: bool,
    /// Log download progress as lines even when stderr is a terminal.
    pub no_progress_bars: bool,
}

/// The Python client's reading of a boolean variable.
fn is_true(v: Option<String>) -> bool {
    v.is_some_and(|v| {
        matches!(
            v.trim().to_ascii_uppercase().as_str(),
            "1" | "ON" | "YES" | "TRUE"
        )
    })
}

impl HubSettings {
    /// Settings from the process environment.
    pub fn from_env() -> Self {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Settings from `lookup(name)` (the value of an environment variable, if set).
    /// Empty values count as unset.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let get = |k: &str| lookup(k).filter(|v| !v.trim().is_empty());
        let hf_home = get("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
            match (get("XDG_CACHE_HOME"), get("HOME")) {
                (Some(xdg), _) => PathBuf::from(xdg).join("huggingface"),
                (None, Some(home)) => PathBuf::from(home).join(".cache/huggingface"),
                // No home at all: hf-hub's own default (its parent is HF_HOME).
                (None, None) => hf_hub::Cache::default()
                    .path()
                    .parent()
                    .map(PathBuf::from)
                    .unwrap_or_default(),
            }
        });
        let token = get("HF_TOKEN")
            .or_else(|| get("HUGGING_FACE_HUB_TOKEN"))
            .and_then(|t| Token::new(&t));
        Self {
            endpoint: get("HF_ENDPOINT")
                .map(|e| e.trim().trim_end_matches('/').to_string())
                .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string()),
            cache_dir: get("HF_HUB_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| hf_home.join("hub")),
            token,
            token_path: get("HF_TOKEN_PATH")
                .map(PathBuf::from)
                .unwrap_or_else(|| hf_home.join("token")),
            offline: is_true(lookup("HF_HUB_OFFLINE")),
            no_progress_bars: is_true(lookup("HF_HUB_DISABLE_PROGRESS_BARS")),
        }
    }

    /// The model cache.
    pub fn cache(&self) -> hf_hub::Cache {
        hf_hub::Cache::new(self.cache_dir.clone())
    }

    /// The token to send: the variable's, else the token file's (None if neither).
    pub fn resolve_token(&self) -> Option<Token> {
        self.token.clone().or_else(|| {
            std::fs::read_to_string(&self.token_path)
                .ok()
                .and_then(|t| Token::new(&t))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(vars: &[(&str, &str)]) -> HubSettings {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        HubSettings::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn standard_variables_are_read() {
        let s = settings(&[
            ("HOME", "/home/u"),
            ("HF_TOKEN", " hf_secret \n"),
            ("HUGGING_FACE_HUB_TOKEN", "hf_other"),
            ("HF_ENDPOINT", "https://hf-mirror.example/"),
            ("HF_HOME", "/data/hf"),
            ("HF_HUB_OFFLINE", "1"),
        ]);
        assert_eq!(s.token.as_ref().map(Token::expose), Some("hf_secret"));
        assert_eq!(s.endpoint, "https://hf-mirror.example");
        assert_eq!(s.cache_dir, PathBuf::from("/data/hf/hub"));
        assert_eq!(s.token_path, PathBuf::from("/data/hf/token"));
        assert!(s.offline);
        assert!(!s.no_progress_bars);
    }

    #[test]
    fn hub_cache_and_token_path_override_hf_home() {
        let s = settings(&[
            ("HF_HOME", "/data/hf"),
            ("HF_HUB_CACHE", "/models"),
            ("HF_TOKEN_PATH", "/secrets/token"),
            ("HUGGING_FACE_HUB_TOKEN", "hf_old_name"),
            ("HF_HUB_DISABLE_PROGRESS_BARS", "true"),
        ]);
        assert_eq!(s.cache_dir, PathBuf::from("/models"));
        assert_eq!(s.token_path, PathBuf::from("/secrets/token"));
        assert_eq!(s.token.as_ref().map(Token::expose), Some("hf_old_name"));
        assert!(s.no_progress_bars);
    }

    #[test]
    fn defaults_without_variables() {
        let s = settings(&[("HOME", "/home/u"), ("HF_TOKEN", "  ")]);
        assert_eq!(s.endpoint, DEFAULT_ENDPOINT);
        assert_eq!(s.cache_dir, PathBuf::from("/home/u/.cache/huggingface/hub"));
        assert_eq!(
            s.token_path,
            PathBuf::from("/home/u/.cache/huggingface/token")
        );
        assert_eq!(s.token, None, "a blank token is no token");
        assert!(!s.offline);
        let s = settings(&[("HOME", "/home/u"), ("XDG_CACHE_HOME", "/xdg")]);
        assert_eq!(s.cache_dir, PathBuf::from("/xdg/huggingface/hub"));
    }

    #[test]
    fn offline_values_follow_the_python_client() {
        for (v, want) in [
            ("1", true),
            ("ON", true),
            ("yes", true),
            ("True", true),
            ("0", false),
            ("false", false),
            ("", false),
        ] {
            assert_eq!(settings(&[("HF_HUB_OFFLINE", v)]).offline, want, "{v:?}");
        }
    }

    #[test]
    fn the_token_is_never_printed() {
        let s = settings(&[("HF_TOKEN", "hf_do_not_print")]);
        for text in [format!("{s:?}"), format!("{}", s.token.clone().unwrap())] {
            assert!(!text.contains("hf_do_not_print"), "{text}");
        }
    }

    #[test]
    fn the_token_file_is_the_fallback() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "hf_from_file\n").unwrap();
        let p = path.to_str().unwrap();
        let s = settings(&[("HF_TOKEN_PATH", p)]);
        assert_eq!(
            s.resolve_token().as_ref().map(Token::expose),
            Some("hf_from_file")
        );
        let s = settings(&[("HF_TOKEN_PATH", p), ("HF_TOKEN", "hf_env")]);
        assert_eq!(
            s.resolve_token().as_ref().map(Token::expose),
            Some("hf_env")
        );
    }
}
