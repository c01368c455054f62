//! [`JobSpec`] → wire [`Job`]: local images are read and sent inline
//! (base64), or uploaded to S3 first and referenced by URI (`--upload-to`).

use std::path::Path;

use anyhow::Context as _;
use base64::Engine as _;
use vargpt_proto::{
    ErrorCode, ErrorInfo, ImageInput, Job, JobKind, JobResult, ResultStatus, SCHEMA_VERSION,
};

use crate::s3;
use crate::spec::{ImageRef, JobSpec};

/// `workerId` of the results the dispatcher writes itself (a job it could
/// not send, or one that never got an answer).
pub const DISPATCHER_WORKER_ID: &str = "vargpt-dispatcher";

/// Where `--upload-to` puts images.
#[derive(Clone)]
pub struct Upload {
    pub client: aws_sdk_s3::Client,
    pub bucket: String,
    /// Empty, or ends with `/`.
    pub prefix: String,
}

impl Upload {
    pub fn new(client: aws_sdk_s3::Client, uri: &str) -> anyhow::Result<Upload> {
        let (bucket, mut prefix) = s3::parse_uri(uri).map_err(anyhow::Error::msg)?;
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        Ok(Upload {
            client,
            bucket,
            prefix,
        })
    }

    /// The key of a job's image: derived from the job id only, so a re-run
    /// overwrites the same object instead of piling up copies.
    pub fn key_for(&self, job_id: &str, path: &Path) -> String {
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        format!("{}{job_id}.{ext}", self.prefix)
    }
}

/// A job ready to publish, or the result that says why it cannot be.
#[derive(Debug, Clone, PartialEq)]
// One short-lived value per job being prepared: boxing would only add an
// allocation (the sizes shift as the contract types grow).
#[allow(clippy::large_enum_variant)]
pub enum Prepared {
    Job(Job),
    Refused(JobResult),
}

pub struct Preparer {
    pub upload: Option<Upload>,
    /// Larger local images are not sent inline (the broker and the worker
    /// have message size limits); they get an `image_too_large` result.
    pub max_inline_bytes: u64,
}

impl Preparer {
    pub async fn prepare(&self, spec: &JobSpec) -> anyhow::Result<Prepared> {
        let image = match &spec.image {
            None => None,
            Some(ImageRef::S3(uri)) => Some(ImageInput::Uri(uri.clone())),
            Some(ImageRef::Inline(data)) => Some(ImageInput::Data(data.clone())),
            Some(ImageRef::Local(path)) => {
                let len = tokio::fs::metadata(path)
                    .await
                    .with_context(|| format!("cannot read {} ({})", path.display(), spec.origin))?
                    .len();
                match &self.upload {
                    Some(upload) => {
                        let data = read(path, &spec.origin).await?;
                        let key = upload.key_for(&spec.id, path);
                        s3::upload(
                            &upload.client,
                            &upload.bucket,
                            &key,
                            data,
                            content_type(path),
                        )
                        .await?;
                        Some(ImageInput::Uri(format!("s3://{}/{key}", upload.bucket)))
                    }
                    None if len > self.max_inline_bytes => {
                        let message = format!(
                            "{} is {len} bytes; images over {} bytes are not sent inline (use --upload-to)",
                            spec.origin, self.max_inline_bytes
                        );
                        return Ok(Prepared::Refused(local_failure(
                            &spec.id,
                            spec.kind,
                            ErrorCode::ImageTooLarge,
                            message,
                        )));
                    }
                    None => {
                        let data = read(path, &spec.origin).await?;
                        Some(ImageInput::Data(
                            base64::engine::general_purpose::STANDARD.encode(data),
                        ))
                    }
                }
            }
        };
        Ok(Prepared::Job(Job {
            version: SCHEMA_VERSION,
            id: spec.id.clone(),
            kind: spec.kind,
            prompt: spec.prompt.clone(),
            image,
            params: spec.params.clone(),
            ..Default::default()
        }))
    }
}

async fn read(path: &Path, origin: &str) -> anyhow::Result<Vec<u8>> {
    tokio::fs::read(path)
        .await
        .with_context(|| format!("cannot read {} ({origin})", path.display()))
}

fn content_type(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    match ext.as_deref() {
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("webp") => "image/webp",
        _ => "application/octet-stream",
    }
}

/// An error result written by the dispatcher itself, shaped like a worker's.
pub fn local_failure(job_id: &str, kind: JobKind, code: ErrorCode, message: String) -> JobResult {
    JobResult {
        version: SCHEMA_VERSION,
        job_id: job_id.to_string(),
        status: ResultStatus::Error,
        kind,
        worker_id: DISPATCHER_WORKER_ID.to_string(),
        error: Some(ErrorInfo {
            code,
            message,
            retryable: false,
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Template;

    #[tokio::test]
    async fn inline_small_refuse_large_pass_uris() {
        let dir = tempfile::tempdir().unwrap();
        let small = dir.path().join("s.png");
        std::fs::write(&small, [1u8, 2, 3]).unwrap();
        let big = dir.path().join("b.png");
        std::fs::write(&big, vec![0u8; 100]).unwrap();
        let preparer = Preparer {
            upload: None,
            max_inline_bytes: 50,
        };
        let t = Template {
            kind: JobKind::Caption,
            ..Default::default()
        };

        let Prepared::Job(job) = preparer
            .prepare(&t.image_job("s.png", ImageRef::Local(small)))
            .await
            .unwrap()
        else {
            panic!("small image refused")
        };
        assert_eq!(job.image, Some(ImageInput::Data("AQID".into())));
        assert_eq!(job.version, 1);

        let Prepared::Refused(r) = preparer
            .prepare(&t.image_job("b.png", ImageRef::Local(big)))
            .await
            .unwrap()
        else {
            panic!("large image sent")
        };
        assert_eq!(r.error.unwrap().code, ErrorCode::ImageTooLarge);
        assert_eq!(r.worker_id, DISPATCHER_WORKER_ID);

        let uri = ImageRef::S3("s3://b/k.png".into());
        let Prepared::Job(job) = preparer.prepare(&t.image_job("k.png", uri)).await.unwrap() else {
            panic!()
        };
        assert_eq!(job.image, Some(ImageInput::Uri("s3://b/k.png".into())));

        let missing = t.image_job("m.png", ImageRef::Local(dir.path().join("m.png")));
        let err = preparer.prepare(&missing).await.unwrap_err().to_string();
        assert!(err.contains("m.png"), "{err}");
    }

    #[tokio::test]
    async fn upload_keys_come_from_the_job_id() {
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version_latest()
            .build();
        let upload = Upload::new(aws_sdk_s3::Client::from_conf(conf), "s3://bucket/in").unwrap();
        assert_eq!(upload.prefix, "in/");
        assert_eq!(
            upload.key_for("a.png-0123", Path::new("x/A.PNG")),
            "in/a.png-0123.png"
        );
        assert_eq!(content_type(Path::new("a.JPG")), "image/jpeg");
    }
}
