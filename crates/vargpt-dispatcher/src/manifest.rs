//! JSONL manifests: one job per line.
//!
//! ```text
//! {"id": "q1", "kind": "vqa", "prompt": "How many cats?", "image": "imgs/a.png"}
//! {"kind": "caption", "image": "s3://datasets/b.jpg", "params": {"maxNewTokens": 64}}
//! {"kind": "generate_image", "prompt": "a red bicycle", "model": "vargpt-7b"}
//! ```
//!
//! Every field is optional except what the kind needs; missing `kind`,
//! `prompt`, `params`, `model` come from the command-line flags. `image` is a
//! local path (relative to the manifest's folder), an `s3://bucket/key` URI,
//! or the wire form `{"data": base64}` / `{"uri": "s3://…"}`, so files of
//! wire jobs (like `examples/jobs.jsonl`) are manifests too.
//! `model` only selects a route. Without `id`, one is derived from the image
//! (or the prompt) and the job's settings. Blank lines and lines starting
//! with `#` are skipped.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::Digest as _;
use vargpt_proto::{JobKind, SamplingParams};

use crate::ids;
use crate::spec::{check_kind, job_id, ImageRef, JobSpec, Template};

/// A bad manifest line, with where it is.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{path}:{line}: {message}")]
pub struct ManifestError {
    pub path: String,
    pub line: usize,
    pub message: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    kind: Option<JobKind>,
    #[serde(default)]
    prompt: Option<String>,
    /// Read by hand for a clear error: a string or a wire `ImageInput`.
    #[serde(default)]
    image: Option<serde_json::Value>,
    /// Accepted for wire jobs; must be the version this crate writes.
    #[serde(default)]
    version: Option<u32>,
    #[serde(default)]
    params: Option<SamplingParams>,
    #[serde(default)]
    model: Option<String>,
}

/// Reads a manifest line by line (never the whole file at once).
pub struct Manifest {
    display: String,
    base_dir: PathBuf,
    template: Template,
    reader: BufReader<File>,
    line_no: usize,
}

impl Manifest {
    pub fn open(path: &Path, template: Template) -> std::io::Result<Manifest> {
        let file = File::open(path)?;
        let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok(Manifest {
            display: path.display().to_string(),
            base_dir,
            template,
            reader: BufReader::new(file),
            line_no: 0,
        })
    }

    fn error(&self, message: impl Into<String>) -> ManifestError {
        ManifestError {
            path: self.display.clone(),
            line: self.line_no,
            message: message.into(),
        }
    }
}

impl Iterator for Manifest {
    type Item = Result<JobSpec, ManifestError>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut buf = Vec::new();
        loop {
            buf.clear();
            self.line_no += 1;
            match self.reader.read_until(b'\n', &mut buf) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) => return Some(Err(self.error(format!("cannot read: {e}")))),
            }
            let Ok(text) = std::str::from_utf8(&buf) else {
                return Some(Err(self.error("not UTF-8")));
            };
            let result = parse_line(text, &self.base_dir, &self.template, &self.origin());
            match result {
                Ok(None) => continue,
                Ok(Some(spec)) => return Some(Ok(spec)),
                Err(message) => return Some(Err(self.error(message))),
            }
        }
    }
}

impl Manifest {
    fn origin(&self) -> String {
        let name = Path::new(&self.display)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        format!("{}:{}", name.unwrap_or_default(), self.line_no)
    }
}

/// One line → a spec, `None` for blank and comment lines, or what is wrong.
pub fn parse_line(
    text: &str,
    base_dir: &Path,
    template: &Template,
    origin: &str,
) -> Result<Option<JobSpec>, String> {
    let text = text.trim();
    if text.is_empty() || text.starts_with('#') {
        return Ok(None);
    }
    let line: Line =
        serde_json::from_str(text).map_err(|e| format!("not a valid job line: {e}"))?;
    let kind = line.kind.unwrap_or(template.kind);
    let prompt = line.prompt.unwrap_or_else(|| template.prompt.clone());
    let params = line.params.or_else(|| template.params.clone());
    let model = line.model.or_else(|| template.model.clone());
    if line
        .version
        .is_some_and(|v| v > vargpt_proto::SCHEMA_VERSION)
    {
        return Err(format!(
            "version {} is not supported",
            line.version.unwrap_or_default()
        ));
    }
    let (image, name, source) = match line.image {
        None => (None, kind.as_str().to_string(), origin.to_string()),
        Some(value) => {
            let (image, name) = image_ref(&value, base_dir)?;
            // As written in the line (a path stays relative to the manifest).
            let source = match &image {
                ImageRef::Local(_) => name.clone(),
                other => other.source(origin),
            };
            (Some(image), name, source)
        }
    };
    check_kind(kind, &prompt, image.is_some())?;
    let id = match line.id {
        Some(id) => {
            ids::check_id(&id)?;
            id
        }
        None => job_id(&name, kind, &prompt, params.as_ref(), model.as_deref()),
    };
    Ok(Some(JobSpec {
        id,
        kind,
        prompt,
        image,
        params,
        model,
        origin: origin.to_string(),
        source,
    }))
}

/// The `image` of a line, and the name a derived id is made from.
fn image_ref(value: &serde_json::Value, base_dir: &Path) -> Result<(ImageRef, String), String> {
    const EXPECTED: &str =
        "image must be a path, an s3:// URI, {\"data\": base64} or {\"uri\": \"s3://…\"}";
    let s3 = |uri: &str| -> Result<(ImageRef, String), String> {
        let (_, key) = crate::s3::parse_uri(uri)?;
        if key.is_empty() {
            return Err(format!("image {uri:?} names no object (s3://bucket/key)"));
        }
        Ok((
            ImageRef::S3(uri.to_string()),
            uri.trim_start_matches("s3://").to_string(),
        ))
    };
    match value {
        serde_json::Value::String(text) => match text.trim() {
            "" => Err("image is empty".into()),
            uri if uri.starts_with("s3://") => s3(uri),
            path => Ok((ImageRef::Local(base_dir.join(path)), path.to_string())),
        },
        serde_json::Value::Object(map) if map.len() == 1 => match map.iter().next() {
            Some((key, serde_json::Value::String(uri))) if key == "uri" => s3(uri),
            Some((key, serde_json::Value::String(data))) if key == "data" => {
                if data.is_empty() {
                    return Err("image.data is empty".into());
                }
                // Same bytes, same name: the id does not depend on the line's position.
                let digest = hex::encode(sha2::Sha256::digest(data.as_bytes()));
                Ok((
                    ImageRef::Inline(data.clone()),
                    format!("inline-{}", &digest[..16]),
                ))
            }
            _ => Err(EXPECTED.into()),
        },
        _ => Err(EXPECTED.into()),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn template() -> Template {
        Template {
            kind: JobKind::Caption,
            ..Default::default()
        }
    }

    fn parse(text: &str) -> Result<Option<JobSpec>, String> {
        parse_line(text, Path::new("/data"), &template(), "m.jsonl:1")
    }

    #[test]
    fn full_and_minimal_lines() {
        let spec = parse(r#"{"id":"q1","kind":"vqa","prompt":"How many?","image":"imgs/a.png","params":{"maxNewTokens":8}}"#)
            .unwrap()
            .unwrap();
        assert_eq!(spec.id, "q1");
        assert_eq!(spec.kind, JobKind::Vqa);
        assert_eq!(spec.image, Some(ImageRef::Local("/data/imgs/a.png".into())));
        assert_eq!(spec.params.unwrap().max_new_tokens, Some(8));
        assert_eq!(spec.source, "imgs/a.png", "as written in the line");

        let spec = parse(r#"{"image":"s3://bucket/k/b.jpg"}"#)
            .unwrap()
            .unwrap();
        assert_eq!(spec.kind, JobKind::Caption);
        assert_eq!(spec.image, Some(ImageRef::S3("s3://bucket/k/b.jpg".into())));
        assert!(spec.id.starts_with("bucket-k-b.jpg-"), "{}", spec.id);
        assert_eq!(spec.source, "s3://bucket/k/b.jpg");

        let gen = parse(r#"{"kind":"generate_image","prompt":"a red bicycle","model":"big"}"#)
            .unwrap()
            .unwrap();
        assert_eq!(gen.model.as_deref(), Some("big"));
        assert!(gen.image.is_none());
        assert_eq!(gen.source, "m.jsonl:1");
        let wire = parse(r#"{"id":"w","version":1,"kind":"caption","image":{"data":"AQID"}}"#)
            .unwrap()
            .unwrap();
        assert_eq!(wire.image, Some(ImageRef::Inline("AQID".into())));
        assert_eq!(wire.source, "m.jsonl:1");
        let derived = parse(r#"{"image":{"data":"AQID"}}"#).unwrap().unwrap();
        assert!(derived.id.starts_with("inline-"), "{}", derived.id);
        let uri = parse(r#"{"image":{"uri":"s3://b/k.png"}}"#)
            .unwrap()
            .unwrap();
        assert_eq!(uri.image, Some(ImageRef::S3("s3://b/k.png".into())));
        assert_eq!(parse("   ").unwrap(), None);
        assert_eq!(parse("# a comment").unwrap(), None);
    }

    #[test]
    fn bad_lines_say_what_is_wrong() {
        let cases = [
            ("{not json", "not a valid job line"),
            (
                r#"{"image":"a.png","maxTokens":3}"#,
                "unknown field `maxTokens`",
            ),
            (
                r#"{"kind":"painting","image":"a.png"}"#,
                "unknown JobKind value",
            ),
            (r#"{"kind":"vqa","image":"a.png"}"#, "vqa needs a prompt"),
            (r#"{"kind":"caption"}"#, "caption needs an image"),
            (
                r#"{"kind":"generate_image","prompt":"x","image":"a.png"}"#,
                "takes no input image",
            ),
            (r#"{"id":"a b","image":"a.png"}"#, "has the character ' '"),
            (r#"{"image":"s3://bucket"}"#, "names no object"),
            (r#"{"image":""}"#, "image is empty"),
            (r#"{"image":"a.png","params":{"seed":"x"}}"#, "not a uint64"),
            (
                r#"{"image":{"url":"http://x/a.png"}}"#,
                "image must be a path",
            ),
            (r#"{"image":7}"#, "image must be a path"),
            (r#"{"image":{"data":""}}"#, "image.data is empty"),
            (r#"{"image":"a.png","version":2}"#, "version 2"),
            (
                r#"{"image":"a.png","replyTo":"q"}"#,
                "unknown field `replyTo`",
            ),
        ];
        for (line, expected) in cases {
            let err = parse(line).unwrap_err();
            assert!(err.contains(expected), "{line}: {err}");
        }
    }

    #[test]
    fn reader_reports_line_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.jsonl");
        let mut f = File::create(&path).unwrap();
        writeln!(f, r#"{{"image":"a.png"}}"#).unwrap();
        writeln!(f).unwrap();
        writeln!(f, r#"{{"image":"b.png","kind":"vqa"}}"#).unwrap();
        f.write_all(b"{\"image\":\"\xff.png\"}\n").unwrap();
        write!(f, r#"{{"image":"c.png"}}"#).unwrap(); // no final newline
        drop(f);
        let items: Vec<_> = Manifest::open(&path, template()).unwrap().collect();
        assert_eq!(items.len(), 4);
        assert_eq!(items[0].as_ref().unwrap().origin, "jobs.jsonl:1");
        let e = items[1].as_ref().unwrap_err();
        assert_eq!(e.line, 3);
        assert!(
            e.to_string().ends_with("jobs.jsonl:3: vqa needs a prompt"),
            "{e}"
        );
        assert_eq!(items[2].as_ref().unwrap_err().line, 4);
        assert_eq!(
            items[3].as_ref().unwrap().image,
            Some(ImageRef::Local(dir.path().join("c.png")))
        );
    }
}
