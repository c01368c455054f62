//! The dispatcher's broker side besides publishing: checking job queues,
//! its durable reply queue (declare, consume, delete when done).

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context as _};
use lapin::options::{
    BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Connection, Consumer};
use sha2::{Digest, Sha256};
use vargpt_proto::wire::Names;

use crate::routing::Router;

/// The reply queue of an output file, `{prefix}.dispatch.{hash}`: the same
/// file always gets the same queue, so a re-run finds the results of the
/// run before.
pub fn default_reply_queue(names: &Names, output: &Path) -> String {
    let absolute = std::fs::canonicalize(output)
        .or_else(|_| std::path::absolute(output))
        .unwrap_or_else(|_| output.to_path_buf());
    let digest = Sha256::digest(absolute.to_string_lossy().as_bytes());
    names.dispatch_reply_queue(&hex::encode(digest)[..16])
}

/// Fails early, with a clear message, when a job queue does not exist (jobs
/// are published `mandatory`, so they would come back unroutable anyway).
pub async fn check_job_queues(connection: &Connection, router: &Router) -> anyhow::Result<()> {
    for queue in router.queues() {
        // A failed passive declare closes its channel: one channel per check.
        let channel = connection.create_channel().await?;
        let options = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let name = ShortString::try_new(queue).map_err(anyhow::Error::msg)?;
        if let Err(e) = channel
            .queue_declare(name, options, FieldTable::default())
            .await
        {
            bail!(
                "job queue {queue:?} does not exist on the broker (is the worker deployed?): {e}"
            );
        }
        let _ = channel.close(200, "checked".into()).await;
    }
    Ok(())
}

/// Declares the reply queue (durable, deleted by the broker after `ttl`
/// unused) and consumes it alone; returns the consumer and how many results
/// were already waiting.
pub async fn consume_replies(
    connection: &Connection,
    queue: &str,
    max_in_flight: usize,
    ttl: Duration,
) -> anyhow::Result<(Consumer, u32)> {
    let channel = connection.create_channel().await?;
    let prefetch = u16::try_from(max_in_flight.saturating_mul(2).max(32)).unwrap_or(u16::MAX);
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let mut args = FieldTable::default();
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1);
    args.insert("x-expires".into(), AMQPValue::LongLongInt(ttl_ms));
    let name = ShortString::try_new(queue).map_err(anyhow::Error::msg)?;
    let options = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let declared = channel
        .queue_declare(name.clone(), options, args)
        .await
        .with_context(|| format!("cannot declare the reply queue {queue:?}"))?;
    let consumer = channel
        .basic_consume(
            name,
            "vargpt-dispatcher".into(),
            BasicConsumeOptions { exclusive: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .with_context(|| {
            format!("cannot consume the reply queue {queue:?}: is another dispatcher writing the same output?")
        })?;
    Ok((consumer, declared.message_count()))
}

/// Deletes the reply queue if it is empty (a finished run).
pub async fn delete_reply_queue(connection: &Connection, queue: &str) {
    let Ok(channel) = connection.create_channel().await else {
        return;
    };
    let Ok(name) = ShortString::try_new(queue) else {
        return;
    };
    let options = QueueDeleteOptions {
        if_empty: true,
        ..Default::default()
    };
    if let Err(e) = channel.queue_delete(name, options).await {
        tracing::debug!(queue, "reply queue kept: {e}");
    }
}

/// `amqp://user:secret@host/…` → `amqp://***@host/…`, for messages.
pub fn redact(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, rest)), Some(_)) => {
            let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
            format!("{scheme}://***@{host}")
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_queue_follows_the_output_path_and_the_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let names = Names::default();
        let a = default_reply_queue(&names, &dir.path().join("a.jsonl"));
        assert_eq!(a, default_reply_queue(&names, &dir.path().join("a.jsonl")));
        assert_ne!(a, default_reply_queue(&names, &dir.path().join("b.jsonl")));
        let stem = names.dispatch_reply_queue("");
        assert!(a.starts_with(&stem), "{a}");
        assert_eq!(a.len(), stem.len() + 16);
        let other = default_reply_queue(&Names::new("t"), &dir.path().join("a.jsonl"));
        assert!(other.starts_with("t.dispatch."), "{other}");
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(redact("amqp://u:p@h:5672/%2f"), "amqp://***@h:5672/%2f");
        assert_eq!(redact("amqp://h"), "amqp://h");
    }
}
