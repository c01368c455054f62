//! One naming rule for environment variables across the binaries:
//! `VARGPT_<FLAG>` (the standard AWS_* and HF_* variables aside). Names used
//! before the rule are still read, with a warning.

/// (old name, new name).
pub const RENAMED: &[(&str, &str)] = &[
    ("AMQP_URL", "VARGPT_AMQP_URL"),
    ("AMQP_URL_FILE", "VARGPT_AMQP_URL_FILE"),
    ("AMQP_CA_FILE", "VARGPT_AMQP_CA_FILE"),
    ("VARGPT_S3_FORCE_PATH_STYLE", "VARGPT_S3_PATH_STYLE"),
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
            "AMQP_CA_FILE" => Some("/ca".to_string()),
            "VARGPT_AMQP_CA_FILE" => Some("/new-ca".to_string()),
            _ => None,
        };
        let l = vargpt_proto::env_names::legacy(RENAMED, env);
        assert_eq!(
            l,
            vec![("AMQP_URL", "VARGPT_AMQP_URL", "amqp://a".to_string())]
        );
        assert!(RENAMED.iter().all(|(_, new)| new.starts_with("VARGPT_")));
    }
}
