//! S3: the client (endpoint / path style / region like the worker's flags),
//! listing an input prefix, uploading local images.

use std::time::Duration;

use aws_sdk_s3::config::Region;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;

/// Where S3 is. Credentials come from the usual AWS chain
/// (`AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`, profile, instance role).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct S3Options {
    /// An S3-compatible server (MinIO, s3s-fs, …); AWS when unset.
    pub endpoint: Option<String>,
    /// `http://host/bucket/key` addressing, which most non-AWS servers need.
    pub force_path_style: bool,
    /// `us-east-1` when neither this nor the environment names one.
    pub region: Option<String>,
}

pub async fn client(options: &S3Options) -> Client {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(region) = &options.region {
        loader = loader.region(Region::new(region.clone()));
    }
    let shared = loader.load().await;
    let mut builder =
        aws_sdk_s3::config::Builder::from(&shared).force_path_style(options.force_path_style);
    if shared.region().is_none() {
        builder = builder.region(Region::new("us-east-1"));
    }
    if let Some(endpoint) = &options.endpoint {
        builder = builder.endpoint_url(endpoint);
    }
    Client::from_conf(builder.build())
}

/// `s3://bucket/rest` → (`bucket`, `rest`); `rest` may be empty.
pub fn parse_uri(uri: &str) -> Result<(String, String), String> {
    let rest = uri
        .strip_prefix("s3://")
        .ok_or_else(|| format!("{uri:?} is not an s3:// URI"))?;
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(format!("{uri:?} names no bucket"));
    }
    Ok((bucket.to_string(), key.to_string()))
}

/// Sends every key under `prefix` (in the listing's order, which is
/// lexicographic), one page at a time, until the receiver is gone.
pub async fn list_keys(
    client: &Client,
    bucket: &str,
    prefix: &str,
    keys: &tokio::sync::mpsc::Sender<String>,
) -> anyhow::Result<()> {
    let mut pages = client
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page
            .map_err(|e| anyhow::anyhow!("cannot list s3://{bucket}/{prefix}: {}", describe(&e)))?;
        for key in page.contents().iter().filter_map(|o| o.key()) {
            if keys.send(key.to_string()).await.is_err() {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Stores `data` at `s3://bucket/key`, retrying transient failures a few times.
pub async fn upload(
    client: &Client,
    bucket: &str,
    key: &str,
    data: Vec<u8>,
    content_type: &str,
) -> anyhow::Result<()> {
    let mut delay = Duration::from_millis(200);
    let mut attempt = 1;
    loop {
        let sent = client
            .put_object()
            .bucket(bucket)
            .key(key)
            .content_type(content_type)
            .body(ByteStream::from(data.clone()))
            .send()
            .await;
        match sent {
            Ok(_) => return Ok(()),
            Err(e) if attempt < 3 => {
                tracing::warn!(
                    bucket,
                    key,
                    attempt,
                    "upload failed, retrying: {}",
                    describe(&e)
                );
                tokio::time::sleep(delay).await;
                delay *= 4;
                attempt += 1;
            }
            Err(e) => {
                return Err(anyhow::anyhow!(
                    "cannot upload s3://{bucket}/{key}: {}",
                    describe(&e)
                ));
            }
        }
    }
}

/// The server's error code and message when it answered, else the whole
/// error chain (connection refused, timeout, …).
fn describe<E, R>(e: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match e.as_service_error() {
        Some(service) => format!(
            "{} {}",
            service.code().unwrap_or("error"),
            service.message().unwrap_or_default()
        )
        .trim_end()
        .to_string(),
        None => DisplayErrorContext(e).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris() {
        assert_eq!(
            parse_uri("s3://b/k/x.png").unwrap(),
            ("b".into(), "k/x.png".into())
        );
        assert_eq!(parse_uri("s3://b").unwrap(), ("b".into(), "".into()));
        assert_eq!(parse_uri("s3://b/").unwrap(), ("b".into(), "".into()));
        assert!(parse_uri("s3:///k").is_err());
        assert!(parse_uri("http://b/k").is_err());
    }
}
