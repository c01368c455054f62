//! The three kinds of input, each read as a stream of [`JobSpec`]s: a folder
//! of images (walked recursively), a JSONL manifest, an S3 prefix. Nothing is
//! loaded whole: a producer feeds a bounded channel that the dispatcher
//! drains only as fast as jobs can be in flight.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use tokio::sync::mpsc;

use crate::manifest::Manifest;
use crate::s3;
use crate::spec::{ImageRef, JobSpec, Template};

/// Image files are recognised by these extensions (any case).
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "webp"];

/// Specs read ahead of the dispatcher at most.
pub const READ_AHEAD: usize = 256;
/// Manifest errors listed at most in one report.
const MAX_ERRORS_SHOWN: usize = 20;

/// What to dispatch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Every image file below this folder.
    Dir(PathBuf),
    /// One job per line.
    Manifest(PathBuf),
    /// Every image object under this prefix.
    S3Prefix { bucket: String, prefix: String },
}

impl Input {
    /// `s3://…` is a prefix, a folder is walked, any other file is a manifest.
    pub fn parse(text: &str) -> anyhow::Result<Input> {
        if text.starts_with("s3://") {
            let (bucket, prefix) = s3::parse_uri(text).map_err(anyhow::Error::msg)?;
            return Ok(Input::S3Prefix { bucket, prefix });
        }
        let path = PathBuf::from(text);
        let meta = std::fs::metadata(&path).with_context(|| format!("input {text:?}"))?;
        Ok(if meta.is_dir() {
            Input::Dir(path)
        } else {
            Input::Manifest(path)
        })
    }
}

impl std::fmt::Display for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Input::Dir(p) => write!(f, "folder {}", p.display()),
            Input::Manifest(p) => write!(f, "manifest {}", p.display()),
            Input::S3Prefix { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

pub fn is_image_name(name: &str) -> bool {
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    ext.is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.as_str()))
}

/// Image files below `root` in a stable order (sorted by name at every
/// level), as (`relative/name` with `/` separators, full path). Hidden files
/// and folders (`.name`) are skipped; symlinks are followed.
pub fn walk_images(root: &Path) -> impl Iterator<Item = anyhow::Result<(String, PathBuf)>> + '_ {
    walkdir::WalkDir::new(root)
        .follow_links(true)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| e.depth() == 0 || !e.file_name().to_string_lossy().starts_with('.'))
        .filter_map(move |entry| {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    return Some(Err(
                        anyhow::Error::new(e).context(format!("cannot walk {}", root.display()))
                    ))
                }
            };
            if !entry.file_type().is_file() || !is_image_name(&entry.file_name().to_string_lossy())
            {
                return None;
            }
            let relative = entry.path().strip_prefix(root).unwrap_or(entry.path());
            let name = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            Some(Ok((name, entry.path().to_path_buf())))
        })
}

/// The name an S3 object's job is derived from: its key below the prefix.
pub fn s3_name<'a>(prefix: &str, key: &'a str) -> &'a str {
    key.strip_prefix(prefix)
        .unwrap_or(key)
        .trim_start_matches('/')
}

/// What a first pass over the input found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scan {
    pub total: u64,
    /// Not yet done according to the output file.
    pub to_do: u64,
}

/// A cheap first pass over a folder or manifest (no image is read): counts
/// the jobs for the progress bar and reports every bad manifest line and
/// duplicate id before anything is sent. `None` for S3 (listing twice costs
/// requests; the progress bar then has no total).
pub fn scan(
    input: &Input,
    template: &Template,
    is_done: impl Fn(&str) -> bool,
) -> anyhow::Result<Option<Scan>> {
    let mut scan = Scan::default();
    let mut count = |spec: &JobSpec| {
        scan.total += 1;
        if !is_done(&spec.id) {
            scan.to_do += 1;
        }
    };
    match input {
        Input::S3Prefix { .. } => return Ok(None),
        Input::Dir(root) => {
            for item in walk_images(root) {
                let (name, path) = item?;
                count(&template.image_job(&name, ImageRef::Local(path)));
            }
        }
        Input::Manifest(path) => {
            let manifest = Manifest::open(path, template.clone())
                .with_context(|| format!("cannot open {}", path.display()))?;
            let mut errors = Vec::new();
            let mut first_seen: HashMap<String, String> = HashMap::new();
            for item in manifest {
                match item {
                    Ok(spec) => {
                        if let Some(previous) = first_seen.get(&spec.id) {
                            errors.push(format!(
                                "{}: same job id {:?} as {previous}; give each line its own \"id\"",
                                spec.origin, spec.id
                            ));
                            continue;
                        }
                        count(&spec);
                        first_seen.insert(spec.id, spec.origin);
                    }
                    Err(e) => errors.push(e.to_string()),
                }
            }
            if !errors.is_empty() {
                let shown = errors
                    .iter()
                    .take(MAX_ERRORS_SHOWN)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("\n  ");
                let more = errors.len().saturating_sub(MAX_ERRORS_SHOWN);
                let more = if more > 0 {
                    format!("\n  … and {more} more")
                } else {
                    String::new()
                };
                bail!(
                    "{} bad line(s) in {}; nothing was sent:\n  {shown}{more}",
                    errors.len(),
                    path.display()
                );
            }
        }
    }
    Ok(Some(scan))
}

/// Starts reading `input` in the background; specs arrive on the receiver in
/// input order, at most [`READ_AHEAD`] ahead of the consumer.
pub fn spawn_reader(
    input: Input,
    template: Template,
    s3_client: Option<aws_sdk_s3::Client>,
) -> mpsc::Receiver<anyhow::Result<JobSpec>> {
    let (tx, rx) = mpsc::channel(READ_AHEAD);
    match input {
        Input::Dir(root) => {
            tokio::task::spawn_blocking(move || {
                for item in walk_images(&root) {
                    let spec =
                        item.map(|(name, path)| template.image_job(&name, ImageRef::Local(path)));
                    if tx.blocking_send(spec).is_err() {
                        return;
                    }
                }
            });
        }
        Input::Manifest(path) => {
            tokio::task::spawn_blocking(move || {
                let manifest = match Manifest::open(&path, template) {
                    Ok(m) => m,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(anyhow::Error::new(e)
                            .context(format!("cannot open {}", path.display()))));
                        return;
                    }
                };
                for item in manifest {
                    if tx.blocking_send(item.map_err(anyhow::Error::new)).is_err() {
                        return;
                    }
                }
            });
        }
        Input::S3Prefix { bucket, prefix } => {
            tokio::spawn(async move {
                let Some(client) = s3_client else {
                    let _ = tx
                        .send(Err(anyhow::anyhow!("an S3 input needs an S3 client")))
                        .await;
                    return;
                };
                let (keys_tx, mut keys_rx) = mpsc::channel::<String>(READ_AHEAD);
                let lister = {
                    let (client, bucket, prefix) = (client.clone(), bucket.clone(), prefix.clone());
                    tokio::spawn(
                        async move { s3::list_keys(&client, &bucket, &prefix, &keys_tx).await },
                    )
                };
                while let Some(key) = keys_rx.recv().await {
                    if !is_image_name(&key) {
                        continue;
                    }
                    let uri = format!("s3://{bucket}/{key}");
                    let spec = template.image_job(s3_name(&prefix, &key), ImageRef::S3(uri));
                    if tx.send(Ok(spec)).await.is_err() {
                        return;
                    }
                }
                match lister.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        let _ = tx.send(Err(e)).await;
                    }
                    Err(e) => {
                        let _ = tx
                            .send(Err(anyhow::anyhow!("S3 listing task failed: {e}")))
                            .await;
                    }
                }
            });
        }
    }
    rx
}

#[cfg(test)]
mod tests {
    use super::*;
    use vargpt_proto::JobKind;

    fn touch(root: &Path, rel: &str) {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"x").unwrap();
    }

    #[test]
    fn extensions() {
        assert!(is_image_name("a.PNG"));
        assert!(is_image_name("b.c.jpeg"));
        assert!(is_image_name("x.webp"));
        assert!(!is_image_name("notes.txt"));
        assert!(!is_image_name("png"));
    }

    #[test]
    fn walk_is_recursive_sorted_and_filtered() {
        let dir = tempfile::tempdir().unwrap();
        for rel in [
            "b.png",
            "a/z.JPG",
            "a/y.txt",
            "a/b/c.webp",
            ".hidden/x.png",
            "a/.x.png",
            "c.jpeg",
        ] {
            touch(dir.path(), rel);
        }
        let names: Vec<String> = walk_images(dir.path()).map(|r| r.unwrap().0).collect();
        assert_eq!(names, ["a/b/c.webp", "a/z.JPG", "b.png", "c.jpeg"]);
    }

    #[test]
    fn scan_counts_what_is_left() {
        let dir = tempfile::tempdir().unwrap();
        for rel in ["1.png", "2.png", "3.png"] {
            touch(dir.path(), rel);
        }
        let template = Template {
            kind: JobKind::Caption,
            ..Default::default()
        };
        let first = template
            .image_job("1.png", ImageRef::Local(dir.path().join("1.png")))
            .id;
        let input = Input::parse(dir.path().to_str().unwrap()).unwrap();
        let scan = scan(&input, &template, |id| id == first).unwrap().unwrap();
        assert_eq!(scan, Scan { total: 3, to_do: 2 });
    }

    #[test]
    fn scan_lists_every_bad_manifest_line_and_duplicate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.jsonl");
        std::fs::write(
            &path,
            concat!(
                "{\"image\":\"a.png\"}\n",
                "{\"image\":\"a.png\"}\n",
                "{\"kind\":\"vqa\",\"image\":\"b.png\"}\n",
                "{\"id\":\"x\",\"image\":\"c.png\"}\n",
                "nonsense\n",
            ),
        )
        .unwrap();
        let template = Template {
            kind: JobKind::Caption,
            ..Default::default()
        };
        let input = Input::parse(path.to_str().unwrap()).unwrap();
        assert_eq!(input, Input::Manifest(path.clone()));
        let err = scan(&input, &template, |_| false).unwrap_err().to_string();
        assert!(err.starts_with("3 bad line(s)"), "{err}");
        assert!(err.contains("jobs.jsonl:2: same job id"), "{err}");
        assert!(err.contains("as jobs.jsonl:1"), "{err}");
        assert!(err.contains("jobs.jsonl:3: vqa needs a prompt"), "{err}");
        assert!(err.contains("jobs.jsonl:5: not a valid job line"), "{err}");
    }

    #[test]
    fn inputs_are_told_apart() {
        assert_eq!(
            Input::parse("s3://data/imgs/").unwrap(),
            Input::S3Prefix {
                bucket: "data".into(),
                prefix: "imgs/".into()
            }
        );
        assert!(Input::parse("/definitely/not/here").is_err());
        assert_eq!(s3_name("imgs/", "imgs/a/b.png"), "a/b.png");
        assert_eq!(s3_name("", "a.png"), "a.png");
    }
}
