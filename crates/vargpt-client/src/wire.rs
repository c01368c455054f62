//! The conventions of a job message on the wire, shared by [`crate::Client`]
//! and the dispatcher: AMQP properties, confirmed publishing, reading results.
//!
//! A job is published to a job queue through the default exchange (or a named
//! exchange) as proto3 JSON with `content_type: application/json`. The worker
//! answers on the queue named by the job's `replyTo` (else the AMQP
//! `reply_to` property), through the default exchange, with the job's
//! correlation id both in the body and in the AMQP `correlation_id`.

use std::time::{SystemTime, UNIX_EPOCH};

use lapin::message::Delivery;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation};
use vargpt_proto::JobResult;

use crate::error::{Error, Result};

/// Header with the publish time in Unix milliseconds; the worker measures the
/// queue wait from it (the AMQP `timestamp` property has only seconds).
pub use vargpt_proto::wire::headers::ENQUEUED_AT_MS as ENQUEUED_AT_HEADER;

/// Persistent delivery mode: jobs survive a broker restart on durable queues.
const PERSISTENT: u8 = 2;

/// An AMQP short string (at most 255 bytes), or an [`Error::InvalidJob`]
/// naming the field. lapin's `From<&str>` would panic on a longer value.
pub fn short(job_id: &str, field: &str, value: &str) -> Result<ShortString> {
    ShortString::try_new(value).map_err(|_| Error::InvalidJob {
        job_id: job_id.to_string(),
        reason: format!("{field} is {} bytes; AMQP allows at most 255", value.len()),
    })
}

/// The AMQP properties of a job message.
pub fn job_properties(
    job_id: &str,
    correlation_id: &str,
    reply_to: &str,
) -> Result<BasicProperties> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let mut headers = FieldTable::default();
    headers.insert(
        ENQUEUED_AT_HEADER.into(),
        AMQPValue::LongLongInt(i64::try_from(now.as_millis()).unwrap_or(i64::MAX)),
    );
    let mut props = BasicProperties::default()
        .with_content_type(vargpt_proto::CONTENT_TYPE.into())
        .with_delivery_mode(PERSISTENT)
        .with_message_id(short(job_id, "id", job_id)?)
        .with_timestamp(now.as_secs())
        .with_headers(headers);
    if !correlation_id.is_empty() {
        props = props.with_correlation_id(short(job_id, "correlationId", correlation_id)?);
    }
    if !reply_to.is_empty() {
        props = props.with_reply_to(short(job_id, "replyTo", reply_to)?);
    }
    Ok(props)
}

/// Publishes one message as `mandatory` on a channel in confirm mode and
/// waits for the broker's confirm: `Ok` once the broker has taken
/// responsibility for it (routed to a queue, persisted when durable).
///
/// The channel must have had `confirm_select`; without it the broker confirms
/// nothing and this returns `Ok` as soon as the frame is written.
pub async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    props: BasicProperties,
    job_id: &str,
) -> Result<()> {
    let options = BasicPublishOptions {
        mandatory: true,
        ..Default::default()
    };
    let confirm = channel
        .basic_publish(
            short(job_id, "exchange", exchange)?,
            short(job_id, "routing key", routing_key)?,
            options,
            body,
            props,
        )
        .await?;
    match confirm.await? {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        Confirmation::Ack(Some(returned)) => Err(Error::Unroutable {
            job_id: job_id.to_string(),
            exchange: exchange.to_string(),
            routing_key: routing_key.to_string(),
            reply_code: returned.reply_code,
            reply_text: returned.reply_text.to_string(),
        }),
        Confirmation::Nack(_) => Err(Error::Nacked {
            job_id: job_id.to_string(),
        }),
    }
}

/// The correlation id of a reply: the AMQP property, else the body's
/// `correlationId` (a worker sets both; either is enough).
pub fn reply_correlation_id(delivery: &Delivery) -> Option<String> {
    if let Some(id) = delivery.properties.correlation_id() {
        if !id.as_str().is_empty() {
            return Some(id.to_string());
        }
    }
    let value: serde_json::Value = serde_json::from_slice(&delivery.data).ok()?;
    value
        .get("correlationId")
        .or_else(|| value.get("correlation_id"))
        .and_then(serde_json::Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// Reads a reply body as a [`JobResult`].
pub fn decode_result(correlation_id: &str, body: &[u8]) -> Result<JobResult> {
    serde_json::from_slice(body).map_err(|source| Error::Decode {
        correlation_id: correlation_id.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_carry_ids_and_content_type() {
        let p = job_properties("job-1", "c-1", "replies").unwrap();
        assert_eq!(
            p.content_type().as_ref().map(|s| s.as_str()),
            Some("application/json")
        );
        assert_eq!(p.correlation_id().as_ref().map(|s| s.as_str()), Some("c-1"));
        assert_eq!(p.reply_to().as_ref().map(|s| s.as_str()), Some("replies"));
        assert_eq!(p.message_id().as_ref().map(|s| s.as_str()), Some("job-1"));
        assert_eq!(*p.delivery_mode(), Some(2));
        let headers = p.headers().as_ref().unwrap();
        // The name the worker reads (not the legacy one), in milliseconds.
        assert_eq!(ENQUEUED_AT_HEADER, vargpt_proto::wire::ENQUEUED_AT_MS);
        assert!(!headers.contains_key(vargpt_proto::wire::LEGACY_ENQUEUED_AT_MS));
        let Some(AMQPValue::LongLongInt(ms)) = headers.inner().get(ENQUEUED_AT_HEADER) else {
            panic!("no {ENQUEUED_AT_HEADER}: {headers:?}");
        };
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        assert!((now_ms - 5_000..=now_ms).contains(ms), "{ms} vs {now_ms}");
        assert_eq!(p.timestamp().unwrap(), (*ms as u64) / 1000);
    }

    #[test]
    fn empty_ids_are_left_out_and_long_ones_refused() {
        let p = job_properties("j", "", "").unwrap();
        assert!(p.correlation_id().is_none());
        assert!(p.reply_to().is_none());
        let long = "x".repeat(256);
        let err = job_properties("j", &long, "").unwrap_err();
        assert!(matches!(err, Error::InvalidJob { .. }), "{err}");
        assert!(err.to_string().contains("correlationId"), "{err}");
    }

    #[test]
    fn results_decode_or_name_the_reply() {
        let ok = br#"{"version":1,"jobId":"a","status":"ok","text":"hi","correlationId":"c"}"#;
        assert_eq!(decode_result("c", ok).unwrap().text, "hi");
        let err = decode_result("c9", b"not json").unwrap_err();
        assert!(matches!(err, Error::Decode { ref correlation_id, .. } if correlation_id == "c9"));
    }
}
