//! What one dataset item becomes before it is a wire `Job`: a [`JobSpec`].

use std::path::PathBuf;

use vargpt_proto::{JobKind, SamplingParams};

use crate::ids;

/// Where a job's input image is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    /// A local file: sent inline (base64) or uploaded first (`--upload-to`).
    Local(PathBuf),
    /// `s3://bucket/key`, passed to the worker as is.
    S3(String),
    /// Base64 bytes given in a manifest line, passed on as is.
    Inline(String),
}

/// One job to send, as read from the input.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSpec {
    pub id: String,
    pub kind: JobKind,
    pub prompt: String,
    pub image: Option<ImageRef>,
    pub params: Option<SamplingParams>,
    /// Only for routing rules; never sent.
    pub model: Option<String>,
    /// Where it came from, for messages: `cats/a.png`, `jobs.jsonl:12`.
    pub origin: String,
    /// The item as the user named it, written into its result line: the
    /// image path (the input folder joined with the file's path below it, or
    /// as written in a manifest), the `s3://` URI, else the manifest line.
    pub source: String,
}

impl ImageRef {
    /// The `source` of a job made from this image, `fallback` for inline bytes.
    pub fn source(&self, fallback: &str) -> String {
        match self {
            ImageRef::Local(path) => path.display().to_string(),
            ImageRef::S3(uri) => uri.clone(),
            ImageRef::Inline(_) => fallback.to_string(),
        }
    }
}

/// The job settings of a run (flags), applied to every directory / S3 item
/// and used as defaults by manifest lines.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Template {
    pub kind: JobKind,
    pub prompt: String,
    pub params: Option<SamplingParams>,
    pub model: Option<String>,
}

impl Template {
    /// Refuses settings no item could be sent with, before anything is read.
    pub fn check_for_images(&self) -> Result<(), String> {
        check_kind(self.kind, &self.prompt, true)
    }

    /// The spec of the image item `name` (a path relative to the input root,
    /// or an S3 key relative to the prefix).
    pub fn image_job(&self, name: &str, image: ImageRef) -> JobSpec {
        let source = image.source(name);
        JobSpec {
            id: job_id(
                name,
                self.kind,
                &self.prompt,
                self.params.as_ref(),
                self.model.as_deref(),
            ),
            kind: self.kind,
            prompt: self.prompt.clone(),
            image: Some(image),
            params: self.params.clone(),
            model: self.model.clone(),
            origin: name.to_string(),
            source,
        }
    }
}

/// The id of item `name` given everything that makes its job what it is.
/// Params are hashed through their JSON, whose field order is fixed by the
/// struct, so equal params give equal ids.
pub fn job_id(
    name: &str,
    kind: JobKind,
    prompt: &str,
    params: Option<&SamplingParams>,
    model: Option<&str>,
) -> String {
    let params = params
        .map(|p| serde_json::to_string(p).unwrap_or_default())
        .unwrap_or_default();
    ids::derive_id(name, &[kind.as_str(), prompt, &params, model.unwrap_or("")])
}

/// The contract's rules on kind, prompt and image (the worker enforces them
/// too; checking here reports a bad manifest line before anything is sent).
pub fn check_kind(kind: JobKind, prompt: &str, has_image: bool) -> Result<(), String> {
    match kind {
        JobKind::Unspecified => {
            return Err("kind is required (caption, vqa, chat or generate_image)".into())
        }
        JobKind::Caption | JobKind::Vqa if !has_image => {
            return Err(format!("{kind} needs an image"))
        }
        JobKind::GenerateImage if has_image => {
            return Err("generate_image takes no input image".into())
        }
        _ => {}
    }
    let needs_prompt = matches!(kind, JobKind::Vqa | JobKind::Chat | JobKind::GenerateImage);
    if needs_prompt && prompt.trim().is_empty() {
        return Err(format!("{kind} needs a prompt"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_rules() {
        check_kind(JobKind::Caption, "", true).unwrap();
        assert!(check_kind(JobKind::Caption, "", false).is_err());
        assert!(check_kind(JobKind::Vqa, "", true)
            .unwrap_err()
            .contains("prompt"));
        assert!(check_kind(JobKind::GenerateImage, "a cat", true).is_err());
        check_kind(JobKind::GenerateImage, "a cat", false).unwrap();
        check_kind(JobKind::Chat, "hi", false).unwrap();
        assert!(check_kind(JobKind::Unspecified, "hi", false).is_err());
    }

    #[test]
    fn image_jobs_get_ids_from_name_and_settings() {
        let t = Template {
            kind: JobKind::Caption,
            ..Default::default()
        };
        let a = t.image_job("x/a.png", ImageRef::Local("/d/x/a.png".into()));
        assert!(a.id.starts_with("x-a.png-"), "{}", a.id);
        assert_eq!(a.source, "/d/x/a.png");
        let s3 = t.image_job("k.png", ImageRef::S3("s3://b/p/k.png".into()));
        assert_eq!(s3.source, "s3://b/p/k.png");
        let t2 = Template {
            params: Some(SamplingParams {
                max_new_tokens: Some(8),
                ..Default::default()
            }),
            ..t.clone()
        };
        assert_ne!(
            t2.image_job("x/a.png", ImageRef::Local("/d/x/a.png".into()))
                .id,
            a.id
        );
    }
}
