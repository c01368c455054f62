//! S3-compatible object storage through aws-sdk-s3. Credentials come only
//! from the standard AWS chain (environment, shared files, web identity, …)
//! and are never logged.

use std::time::Duration;

use async_trait::async_trait;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_s3::config::{RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;

use crate::pipeline::{ImageStore, StoreError, StoredObject};

#[derive(Debug, Clone)]
pub struct S3Settings {
    /// Where generated images go (and the default allowed input bucket).
    pub bucket: String,
    /// For S3-compatible servers (MinIO, Ceph, s3s); `None` is AWS.
    pub endpoint: Option<String>,
    pub region: String,
    /// `http://host/bucket/key` instead of `http://bucket.host/key`;
    /// most self-hosted servers need it.
    pub path_style: bool,
    /// Results carry `{public_base_url}/{key}` instead of `s3://bucket/key`.
    pub public_base_url: Option<String>,
    pub connect_timeout: Duration,
    pub operation_timeout: Duration,
    pub max_attempts: u32,
}

pub struct S3Store {
    client: Client,
    settings: S3Settings,
}

impl S3Store {
    pub async fn new(settings: S3Settings) -> Self {
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(settings.connect_timeout)
            .operation_timeout(settings.operation_timeout)
            .build();
        let shared = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(settings.region.clone()))
            .timeout_config(timeouts)
            .retry_config(RetryConfig::standard().with_max_attempts(settings.max_attempts.max(1)))
            .load()
            .await;
        let mut conf = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(settings.path_style)
            // Only checksum when an operation requires it: S3-compatible
            // servers differ in which flexible checksums they understand.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if let Some(ep) = &settings.endpoint {
            conf = conf.endpoint_url(ep);
        }
        S3Store {
            client: Client::from_conf(conf.build()),
            settings,
        }
    }

    fn url_of(&self, key: &str) -> String {
        match &self.settings.public_base_url {
            Some(base) => format!("{}/{key}", base.trim_end_matches('/')),
            None => format!("s3://{}/{key}", self.settings.bucket),
        }
    }
}

/// Sorts SDK errors into "retry later" and "will not work".
fn classify<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
    what: &str,
    err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> StoreError {
    let status = err.raw_response().map(|r| r.status().as_u16());
    let code = err.code().unwrap_or("").to_string();
    let detail = format!("{what}: {}", DisplayErrorContext(&err));
    match (&err, status) {
        (SdkError::ServiceError(_), Some(404)) => StoreError::NotFound(what.to_string()),
        _ if code == "NoSuchKey" || code == "NotFound" => StoreError::NotFound(what.to_string()),
        (SdkError::ServiceError(_), Some(s)) if s == 429 || s >= 500 => {
            StoreError::Unavailable(detail)
        }
        (SdkError::ServiceError(_), _) => StoreError::Refused(detail),
        // Timeouts, connection failures, unreadable responses.
        _ => StoreError::Unavailable(detail),
    }
}

#[async_trait]
impl ImageStore for S3Store {
    async fn fetch(
        &self,
        bucket: &str,
        key: &str,
        max_bytes: usize,
    ) -> Result<Vec<u8>, StoreError> {
        let what = format!("s3://{bucket}/{key}");
        let resp = self
            .client
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| classify(&what, e))?;
        let size = resp.content_length().unwrap_or(0).max(0) as u64;
        if size > max_bytes as u64 {
            return Err(StoreError::TooLarge {
                size,
                limit: max_bytes,
            });
        }
        // Stream with a cap too: the declared length is not a promise. The
        // SDK's operation timeout ends with the response headers, so the
        // body gets its own bound: a server that stalls mid-body must not
        // hold the job's slot forever.
        let mut body = resp.body;
        let read = async {
            let mut out = Vec::with_capacity(size as usize);
            while let Some(chunk) = body.next().await {
                let chunk = chunk
                    .map_err(|e| StoreError::Unavailable(format!("{what}: reading body: {e}")))?;
                out.extend_from_slice(&chunk);
                if out.len() > max_bytes {
                    return Err(StoreError::TooLarge {
                        size: out.len() as u64,
                        limit: max_bytes,
                    });
                }
            }
            Ok(out)
        };
        let limit = self.settings.operation_timeout;
        tokio::time::timeout(limit, read).await.unwrap_or_else(|_| {
            Err(StoreError::Unavailable(format!(
                "{what}: body not read within {} s",
                limit.as_secs_f64()
            )))
        })
    }

    async fn put_png(
        &self,
        key: &str,
        png: Vec<u8>,
        sha256_hex: &str,
    ) -> Result<StoredObject, StoreError> {
        let bucket = &self.settings.bucket;
        self.client
            .put_object()
            .bucket(bucket)
            .key(key)
            .content_type("image/png")
            .metadata("sha256", sha256_hex)
            .body(ByteStream::from(png))
            .send()
            .await
            .map_err(|e| classify(&format!("s3://{bucket}/{key}"), e))?;
        Ok(StoredObject {
            bucket: bucket.clone(),
            key: key.to_string(),
            url: self.url_of(key),
        })
    }

    async fn check(&self) -> Result<(), StoreError> {
        let bucket = &self.settings.bucket;
        self.client
            .head_bucket()
            .bucket(bucket)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| match classify(&format!("bucket {bucket}"), e) {
                StoreError::NotFound(w) => StoreError::Refused(format!("{w} does not exist")),
                other => other,
            })
    }

    fn describe(&self) -> String {
        match &self.settings.endpoint {
            Some(ep) => format!("s3://{} at {ep}", self.settings.bucket),
            None => format!(
                "s3://{} (AWS, {})",
                self.settings.bucket, self.settings.region
            ),
        }
    }
}
