//! Message headers the worker reads and writes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;

use crate::pipeline::Meta;

/// Set by quorum queues: earlier deliveries that were not acked (RabbitMQ 3.x
/// counts every return, including a dead consumer's).
pub const DELIVERY_COUNT: &str = "x-delivery-count";
/// RabbitMQ 4.x: earlier acquisitions of any kind; there `x-delivery-count`
/// only counts explicit failures, so the larger of the two is used.
pub const ACQUIRED_COUNT: &str = "x-acquired-count";
/// Processing attempt (1 when absent); the retry path increments it.
pub const ATTEMPT: &str = "x-vargpt-attempt";
/// Publish time in Unix milliseconds, set by clients (and kept across retries)
/// for an exact queue-wait measurement; the AMQP `timestamp` has seconds only.
pub const ENQUEUED_AT_MS: &str = "x-vargpt-enqueued-at-ms";
/// Annotations on dead letters.
pub const ERROR_CODE: &str = "x-vargpt-error-code";
pub const ERROR_MESSAGE: &str = "x-vargpt-error-message";
pub const WORKER_ID: &str = "x-vargpt-worker-id";
pub const FAILED_AT_MS: &str = "x-vargpt-failed-at-ms";
/// On results: the job id and the status, so consumers can filter without parsing.
pub const JOB_ID: &str = "x-vargpt-job-id";
pub const STATUS: &str = "x-vargpt-status";

pub fn get_u64(headers: Option<&FieldTable>, key: &str) -> Option<u64> {
    let v = headers?.inner().get(key)?;
    match v {
        AMQPValue::ShortShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::ShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::LongUInt(n) => Some(u64::from(*n)),
        AMQPValue::ShortShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::ShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::Timestamp(n) => Some(*n),
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok()?.trim().parse().ok(),
        AMQPValue::ShortString(s) => s.as_str().trim().parse().ok(),
        _ => None,
    }
}

pub fn set_str(headers: &mut FieldTable, key: &str, value: &str) {
    headers.insert(
        ShortString::from(key),
        AMQPValue::LongString(LongString::from(value)),
    );
}

pub fn set_u64(headers: &mut FieldTable, key: &str, value: u64) {
    headers.insert(
        ShortString::from(key),
        AMQPValue::LongLongInt(i64::try_from(value).unwrap_or(i64::MAX)),
    );
}

/// A copy of `headers` without `drop`.
pub fn without(headers: Option<&FieldTable>, drop: &[&str]) -> FieldTable {
    let mut out = FieldTable::default();
    if let Some(h) = headers {
        for (k, v) in h {
            if !drop.contains(&k.as_str()) {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    out
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Transport metadata of a delivery.
pub fn meta_of(props: &BasicProperties) -> Meta {
    let headers = props.headers().as_ref();
    let short = |s: &Option<ShortString>| {
        s.as_ref()
            .map(|v| v.as_str().to_string())
            .filter(|v| !v.is_empty())
    };
    let enqueued_at = get_u64(headers, ENQUEUED_AT_MS)
        .map(|ms| UNIX_EPOCH + Duration::from_millis(ms))
        .or_else(|| {
            props
                .timestamp()
                .map(|s| UNIX_EPOCH + Duration::from_secs(s))
        });
    Meta {
        message_id: short(props.message_id()),
        reply_to: short(props.reply_to()),
        correlation_id: short(props.correlation_id()),
        attempt: get_u64(headers, ATTEMPT).map_or(1, |a| a.clamp(1, u64::from(u32::MAX)) as u32),
        previous_deliveries: get_u64(headers, DELIVERY_COUNT)
            .max(get_u64(headers, ACQUIRED_COUNT))
            .map_or(0, |n| n.min(u64::from(u32::MAX)) as u32),
        enqueued_at,
        ..Meta::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_any_integer_encoding() {
        let mut h = FieldTable::default();
        h.insert(DELIVERY_COUNT.into(), AMQPValue::LongLongInt(3));
        set_str(&mut h, ATTEMPT, "2");
        set_u64(&mut h, ENQUEUED_AT_MS, 1_000);
        let props = BasicProperties::default()
            .with_headers(h)
            .with_reply_to("r".into());
        let m = meta_of(&props);
        assert_eq!(m.previous_deliveries, 3);
        assert_eq!(m.attempt, 2);
        assert_eq!(m.enqueued_at, Some(UNIX_EPOCH + Duration::from_secs(1)));
        assert_eq!(m.reply_to.as_deref(), Some("r"));
        let stripped = without(props.headers().as_ref(), &[DELIVERY_COUNT]);
        assert!(!stripped.contains_key(DELIVERY_COUNT));
        assert!(stripped.contains_key(ATTEMPT));
        // RabbitMQ 4.x: the acquisition count wins when it is larger.
        let mut h4 = FieldTable::default();
        h4.insert(DELIVERY_COUNT.into(), AMQPValue::LongLongInt(0));
        h4.insert(ACQUIRED_COUNT.into(), AMQPValue::LongLongInt(2));
        assert_eq!(
            meta_of(&BasicProperties::default().with_headers(h4)).previous_deliveries,
            2
        );
    }
}
