//! serde helpers for the proto3 JSON mapping rules serde does not do by itself.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// `optional uint64`: written as a JSON string (proto3 JSON keeps 64-bit
/// integers exact that way), read from a string or a number.
pub mod opt_u64 {
    use super::*;

    pub fn serialize<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(n) => s.serialize_str(&n.to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        match Option::<serde_json::Value>::deserialize(d)? {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) => s
                .parse()
                .map(Some)
                .map_err(|_| serde::de::Error::custom(format!("{s:?} is not a uint64"))),
            Some(serde_json::Value::Number(n)) => n
                .as_u64()
                .map(Some)
                .ok_or_else(|| serde::de::Error::custom(format!("{n} is not a uint64"))),
            Some(other) => Err(serde::de::Error::custom(format!(
                "expected a uint64 string or number, got {other}"
            ))),
        }
    }
}

/// `google.protobuf.Timestamp`: an RFC 3339 string in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(pub OffsetDateTime);

impl Timestamp {
    pub fn now() -> Self {
        Timestamp(OffsetDateTime::now_utc())
    }

    pub fn parse(s: &str) -> Result<Self, time::error::Parse> {
        OffsetDateTime::parse(s, &Rfc3339).map(Timestamp)
    }

    pub fn to_rfc3339(&self) -> String {
        // Formatting an OffsetDateTime as RFC 3339 only fails for years outside
        // 0..=9999, which `parse` cannot produce.
        self.0
            .format(&Rfc3339)
            .unwrap_or_else(|_| self.0.unix_timestamp().to_string())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Timestamp::parse(&s).map_err(|e| {
            serde::de::Error::custom(format!("{s:?} is not an RFC 3339 timestamp: {e}"))
        })
    }
}

pub(crate) fn is_zero(v: &u32) -> bool {
    *v == 0
}

pub(crate) fn is_false(v: &bool) -> bool {
    !*v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct S {
        #[serde(default, with = "opt_u64", skip_serializing_if = "Option::is_none")]
        seed: Option<u64>,
    }

    #[test]
    fn u64_is_a_string_on_output_and_either_on_input() {
        let s = S {
            seed: Some(u64::MAX),
        };
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"seed":"18446744073709551615"}"#
        );
        assert_eq!(
            serde_json::from_str::<S>(r#"{"seed":7}"#).unwrap().seed,
            Some(7)
        );
        assert_eq!(
            serde_json::from_str::<S>(r#"{"seed":"7"}"#).unwrap().seed,
            Some(7)
        );
        assert_eq!(serde_json::from_str::<S>(r#"{}"#).unwrap().seed, None);
        assert!(serde_json::from_str::<S>(r#"{"seed":-1}"#).is_err());
        assert!(serde_json::from_str::<S>(r#"{"seed":"x"}"#).is_err());
    }

    #[test]
    fn timestamps_are_rfc3339() {
        let t = Timestamp::parse("2025-01-02T03:04:05.5+01:00").unwrap();
        assert_eq!(t.0.unix_timestamp(), 1735783445);
        let back: Timestamp = serde_json::from_str(&serde_json::to_string(&t).unwrap()).unwrap();
        assert_eq!(back, t);
        assert!(Timestamp::parse("yesterday").is_err());
    }
}
