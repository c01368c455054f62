//! Message headers the worker reads and writes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;

use crate::pipeline::Meta;

pub use vargpt_proto::wire::headers::{
    ACQUIRED_COUNT, ATTEMPT, DELIVERY_COUNT, ENQUEUED_AT_MS, ERROR_CODE, ERROR_MESSAGE,
    FAILED_AT_MS, JOB_ID, LEGACY_ENQUEUED_AT_MS, STATUS, WORKER_ID,
};

/// Most bytes the header table of a message the worker publishes may take.
/// A content header must fit in one AMQP frame (`frame_max`, 128 KiB by
/// default) or the broker closes the whole connection; a client's own
/// headers are copied onto dead letters and retries, so they are budgeted.
pub const MAX_HEADER_TABLE_BYTES: usize = 32 << 10;
/// Set instead of the original headers when they did not fit: their size.
pub const HEADERS_DROPPED: &str = "x-vargpt-headers-dropped-bytes";

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

/// Sets a string header, bounded and escaped: values may quote client input.
pub fn set_str(headers: &mut FieldTable, key: &str, value: &str) {
    headers.insert(
        ShortString::from(key),
        AMQPValue::LongString(LongString::from(vargpt_proto::bounded::message(value))),
    );
}

/// The AMQP wire size of a header table (0-9-1 field-table encoding).
pub fn encoded_len(table: &FieldTable) -> usize {
    4 + table
        .inner()
        .iter()
        .map(|(k, v)| 1 + k.as_str().len() + 1 + value_len(v))
        .sum::<usize>()
}

fn value_len(v: &AMQPValue) -> usize {
    match v {
        AMQPValue::Boolean(_) | AMQPValue::ShortShortInt(_) | AMQPValue::ShortShortUInt(_) => 1,
        AMQPValue::ShortInt(_) | AMQPValue::ShortUInt(_) => 2,
        AMQPValue::LongInt(_) | AMQPValue::LongUInt(_) | AMQPValue::Float(_) => 4,
        AMQPValue::LongLongInt(_) | AMQPValue::Double(_) | AMQPValue::Timestamp(_) => 8,
        AMQPValue::DecimalValue(_) => 5,
        AMQPValue::ShortString(s) => 1 + s.as_str().len(),
        AMQPValue::LongString(s) => 4 + s.as_bytes().len(),
        AMQPValue::ByteArray(b) => 4 + b.len(),
        AMQPValue::FieldArray(a) => {
            4 + a.as_slice().iter().map(|v| 1 + value_len(v)).sum::<usize>()
        }
        AMQPValue::FieldTable(t) => encoded_len(t),
        AMQPValue::Void => 0,
    }
}

/// A copy of `original` (less `drop`) to republish with the worker's own
/// headers added by `add`. If the client's headers would push the table past
/// [`MAX_HEADER_TABLE_BYTES`], they are left out and their size noted: the
/// body and the worker's annotations always go through.
pub fn republished(
    original: Option<&FieldTable>,
    drop: &[&str],
    add: impl Fn(&mut FieldTable),
) -> FieldTable {
    let mut out = without(original, drop);
    add(&mut out);
    if encoded_len(&out) <= MAX_HEADER_TABLE_BYTES {
        return out;
    }
    // Only on this path (the client's headers too large) is a table of the
    // worker's own headers alone built.
    let mut ours = FieldTable::default();
    add(&mut ours);
    let theirs = original.map_or(0, encoded_len);
    set_u64(&mut ours, HEADERS_DROPPED, theirs as u64);
    ours
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
    // Checked: a hostile timestamp must not overflow the clock (a panic
    // here would take the consumer down, found by the `amqp` fuzz target).
    let enqueued_at = get_u64(headers, ENQUEUED_AT_MS)
        .or_else(|| get_u64(headers, LEGACY_ENQUEUED_AT_MS))
        .and_then(|ms| UNIX_EPOCH.checked_add(Duration::from_millis(ms)))
        .or_else(|| {
            props
                .timestamp()
                .and_then(|s| UNIX_EPOCH.checked_add(Duration::from_secs(s)))
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
    fn legacy_enqueue_header_is_read_with_milliseconds() {
        let mut h = FieldTable::default();
        set_u64(&mut h, LEGACY_ENQUEUED_AT_MS, 1_234);
        let m = meta_of(&BasicProperties::default().with_headers(h));
        assert_eq!(
            m.enqueued_at,
            Some(UNIX_EPOCH + Duration::from_millis(1_234))
        );
    }

    #[test]
    fn hostile_timestamps_do_not_overflow() {
        let m = meta_of(&BasicProperties::default().with_timestamp(u64::MAX));
        assert_eq!(m.enqueued_at, None);
        let mut h = FieldTable::default();
        set_u64(&mut h, ENQUEUED_AT_MS, u64::MAX);
        let _ = meta_of(&BasicProperties::default().with_headers(h));
    }

    #[test]
    fn encoded_len_matches_the_wire_encoding() {
        let mut h = FieldTable::default();
        set_str(&mut h, "ab", "xyz"); // 1+2 +1 +4+3
        set_u64(&mut h, "c", 7); // 1+1 +1 +8
        assert_eq!(encoded_len(&h), 4 + 11 + 11);
        let mut nested = FieldTable::default();
        nested.insert("t".into(), AMQPValue::FieldTable(h.clone()));
        assert_eq!(encoded_len(&nested), 4 + (1 + 1 + 1 + encoded_len(&h)));
    }

    #[test]
    fn oversized_client_headers_are_dropped_not_ours() {
        let mut theirs = FieldTable::default();
        theirs.insert(
            "huge".into(),
            AMQPValue::LongString(LongString::from("x".repeat(120_000))),
        );
        theirs.insert(DELIVERY_COUNT.into(), AMQPValue::LongLongInt(2));
        let out = republished(Some(&theirs), &[DELIVERY_COUNT], |h| {
            set_str(h, ERROR_MESSAGE, &"m".repeat(1 << 20));
            set_u64(h, ATTEMPT, 2);
        });
        assert!(encoded_len(&out) <= MAX_HEADER_TABLE_BYTES);
        assert!(!out.contains_key("huge"));
        assert_eq!(get_u64(Some(&out), ATTEMPT), Some(2));
        assert!(get_u64(Some(&out), HEADERS_DROPPED).unwrap() > 120_000);
        // Small client headers are kept.
        let mut small = FieldTable::default();
        set_str(&mut small, "tenant", "t1");
        let out = republished(Some(&small), &[], |h| set_u64(h, ATTEMPT, 3));
        assert!(out.contains_key("tenant") && out.contains_key(ATTEMPT));
    }

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
