//! Routing rules: which job queue a job goes to, by kind and/or model.
//!
//! ```toml
//! default_queue = "vargpt.jobs"          # optional; else --queue
//!
//! [[route]]
//! kind = "generate_image"
//! queue = "vargpt.jobs.image"
//!
//! [[route]]
//! model = "vargpt-13b"                   # manifest "model" field or --model
//! queue = "vargpt.jobs.13b"
//! ```
//!
//! The same as JSON (a file ending in `.json`):
//! `{"default_queue": "vargpt.jobs", "route": [{"kind": "caption", "queue": "q"}]}`.
//! The first rule whose every given field matches wins; no match: the default queue.

use std::collections::BTreeSet;
use std::path::Path;

use serde::Deserialize;
use vargpt_proto::JobKind;

#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    #[error("cannot read routing rules {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("routing rules {path}: {message}")]
    Invalid { path: String, message: String },
}

/// One `[[route]]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    #[serde(default)]
    pub kind: Option<JobKind>,
    #[serde(default)]
    pub model: Option<String>,
    pub queue: String,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    #[serde(default)]
    default_queue: Option<String>,
    #[serde(default)]
    route: Vec<Route>,
}

/// Checked routing rules.
#[derive(Debug, Clone, PartialEq)]
pub struct Router {
    routes: Vec<Route>,
    default_queue: String,
}

impl Router {
    /// Everything to one queue.
    pub fn single(queue: impl Into<String>) -> Router {
        Router {
            routes: Vec::new(),
            default_queue: queue.into(),
        }
    }

    /// Reads rules from a `.json` file or, for any other name, TOML.
    pub fn load(path: &Path, default_queue: &str) -> Result<Router, RoutingError> {
        let display = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| RoutingError::Read {
            path: display.clone(),
            source,
        })?;
        let json = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"));
        Router::parse(&text, json, default_queue).map_err(|message| RoutingError::Invalid {
            path: display,
            message,
        })
    }

    /// Parses and checks rules; `default_queue` applies when the rules set none.
    pub fn parse(text: &str, json: bool, default_queue: &str) -> Result<Router, String> {
        let file: RulesFile = if json {
            serde_json::from_str(text).map_err(|e| e.to_string())?
        } else {
            toml::from_str(text).map_err(|e| e.to_string())?
        };
        let default_queue = file
            .default_queue
            .unwrap_or_else(|| default_queue.to_string());
        check_queue_name(&default_queue).map_err(|e| format!("default_queue: {e}"))?;
        for (i, route) in file.route.iter().enumerate() {
            let n = i + 1;
            check_queue_name(&route.queue).map_err(|e| format!("route {n}: {e}"))?;
            if route.kind.is_none() && route.model.is_none() {
                return Err(format!("route {n} has neither kind nor model and would match every job; use default_queue"));
            }
            if route.kind == Some(JobKind::Unspecified) {
                return Err(format!("route {n}: kind_unspecified never matches a job"));
            }
        }
        Ok(Router {
            routes: file.route,
            default_queue,
        })
    }

    /// The queue for a job of `kind` with the (routing-only) `model`.
    pub fn queue_for(&self, kind: JobKind, model: Option<&str>) -> &str {
        self.routes
            .iter()
            .find(|r| {
                r.kind.is_none_or(|k| k == kind)
                    && r.model.as_deref().is_none_or(|m| Some(m) == model)
            })
            .map_or(self.default_queue.as_str(), |r| r.queue.as_str())
    }

    /// Every queue a job may be sent to.
    pub fn queues(&self) -> BTreeSet<&str> {
        self.routes
            .iter()
            .map(|r| r.queue.as_str())
            .chain([self.default_queue.as_str()])
            .collect()
    }
}

fn check_queue_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("queue name is empty".into());
    }
    if name.len() > 255 {
        return Err(format!(
            "queue name is {} bytes; AMQP allows 255",
            name.len()
        ));
    }
    if name.starts_with("amq.") {
        return Err(format!(
            "{name:?}: names starting with \"amq.\" are reserved by the broker"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOML: &str = r#"
        [[route]]
        kind = "generate_image"
        queue = "q.image"

        [[route]]
        model = "big"
        queue = "q.big"

        [[route]]
        kind = "caption"
        model = "small"
        queue = "q.small-caption"
    "#;

    #[test]
    fn first_matching_rule_wins_else_default() {
        let r = Router::parse(TOML, false, "q.default").unwrap();
        assert_eq!(r.queue_for(JobKind::GenerateImage, Some("big")), "q.image");
        assert_eq!(r.queue_for(JobKind::Caption, Some("big")), "q.big");
        assert_eq!(
            r.queue_for(JobKind::Caption, Some("small")),
            "q.small-caption"
        );
        assert_eq!(r.queue_for(JobKind::Vqa, Some("small")), "q.default");
        assert_eq!(r.queue_for(JobKind::Caption, None), "q.default");
        assert_eq!(
            r.queues().into_iter().collect::<Vec<_>>(),
            ["q.big", "q.default", "q.image", "q.small-caption"]
        );
    }

    #[test]
    fn json_and_default_queue_in_the_file() {
        let json = r#"{"default_queue":"q.file","route":[{"kind":"vqa","queue":"q.vqa"}]}"#;
        let r = Router::parse(json, true, "q.flag").unwrap();
        assert_eq!(r.queue_for(JobKind::Vqa, None), "q.vqa");
        assert_eq!(r.queue_for(JobKind::Chat, None), "q.file");
        assert_eq!(Router::single("q").queue_for(JobKind::Chat, None), "q");
    }

    #[test]
    fn bad_rules_are_refused() {
        let cases = [
            ("[[route]]\nqueue = \"q\"", "would match every job"),
            (
                "[[route]]\nkind = \"caption\"\nqueue = \"\"",
                "route 1: queue name is empty",
            ),
            (
                "[[route]]\nkind = \"drawing\"\nqueue = \"q\"",
                "unknown JobKind",
            ),
            (
                "[[route]]\nkind = \"caption\"\nqueue = \"q\"\nprio = 1",
                "unknown field",
            ),
            ("default_queue = \"amq.x\"", "reserved"),
            ("[[route]]\nkind = \"caption\"", "missing field `queue`"),
        ];
        for (text, expected) in cases {
            let err = Router::parse(text, false, "q").unwrap_err();
            assert!(err.contains(expected), "{text}: {err}");
        }
    }

    #[test]
    fn load_reads_files_and_names_them_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routes.toml");
        std::fs::write(&path, TOML).unwrap();
        assert_eq!(
            Router::load(&path, "d")
                .unwrap()
                .queue_for(JobKind::GenerateImage, None),
            "q.image"
        );
        let bad = dir.path().join("routes.json");
        std::fs::write(&bad, "{").unwrap();
        let err = Router::load(&bad, "d").unwrap_err().to_string();
        assert!(err.contains("routes.json"), "{err}");
        assert!(Router::load(&dir.path().join("none.toml"), "d").is_err());
    }
}
