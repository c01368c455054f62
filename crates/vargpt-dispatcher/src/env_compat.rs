//! Environment variables follow one rule across the binaries:
//! `VARGPT_<FLAG>` (`--max-in-flight` → `VARGPT_MAX_IN_FLIGHT`), with the
//! worker's names where a flag is shared (`VARGPT_AMQP_URL`,
//! `VARGPT_QUEUE_PREFIX`, `VARGPT_S3_PATH_STYLE`, …). Names used before the
//! rule are still read, with a warning.

/// (old name, new name).
pub const RENAMED: &[(&str, &str)] = &[
    ("AMQP_URL", "VARGPT_AMQP_URL"),
    ("VARGPT_S3_FORCE_PATH_STYLE", "VARGPT_S3_PATH_STYLE"),
    ("VARGPT_DISPATCH_INPUT", "VARGPT_INPUT"),
    ("VARGPT_DISPATCH_OUTPUT", "VARGPT_OUTPUT"),
    ("VARGPT_DISPATCH_ROUTES", "VARGPT_ROUTES"),
    ("VARGPT_DISPATCH_KIND", "VARGPT_KIND"),
    ("VARGPT_DISPATCH_PROMPT", "VARGPT_PROMPT"),
    ("VARGPT_DISPATCH_PARAMS", "VARGPT_PARAMS"),
    ("VARGPT_DISPATCH_MODEL", "VARGPT_MODEL"),
    ("VARGPT_DISPATCH_UPLOAD_TO", "VARGPT_UPLOAD_TO"),
    ("VARGPT_DISPATCH_MAX_IN_FLIGHT", "VARGPT_MAX_IN_FLIGHT"),
    ("VARGPT_DISPATCH_JOB_TIMEOUT", "VARGPT_JOB_TIMEOUT"),
    ("VARGPT_DISPATCH_MAX_ATTEMPTS", "VARGPT_MAX_ATTEMPTS"),
    ("VARGPT_DISPATCH_REPLY_QUEUE", "VARGPT_REPLY_QUEUE"),
    ("VARGPT_DISPATCH_REPLY_QUEUE_TTL", "VARGPT_REPLY_QUEUE_TTL"),
    (
        "VARGPT_DISPATCH_MAX_INLINE_BYTES",
        "VARGPT_MAX_INLINE_BYTES",
    ),
    (
        "VARGPT_DISPATCH_PREPARE_CONCURRENCY",
        "VARGPT_PREPARE_CONCURRENCY",
    ),
];

/// Copies the old names onto the new ones (see [`vargpt_proto::env_names`]);
/// returns the warnings to log. Call before any other thread starts.
pub fn adopt_legacy() -> Vec<String> {
    vargpt_proto::env_names::adopt_legacy(RENAMED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_names_map_to_new_ones_unless_the_new_one_is_set() {
        let env = |k: &str| match k {
            "AMQP_URL" => Some("amqp://a".to_string()),
            "VARGPT_DISPATCH_KIND" => Some("vqa".to_string()),
            "VARGPT_KIND" => Some("chat".to_string()),
            _ => None,
        };
        assert_eq!(
            vargpt_proto::env_names::legacy(RENAMED, env),
            vec![("AMQP_URL", "VARGPT_AMQP_URL", "amqp://a".to_string())]
        );
    }

    #[test]
    fn new_names_follow_the_rule() {
        for (old, new) in RENAMED {
            assert!(new.starts_with("VARGPT_"), "{new}");
            assert_ne!(old, new);
            assert!(!new.starts_with("VARGPT_DISPATCH_"), "{new}");
        }
    }
}
