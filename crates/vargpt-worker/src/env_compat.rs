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

/// The renames to apply: old names that are set while their new name is
/// not. Returns (old, new, value).
pub fn legacy(get: impl Fn(&str) -> Option<String>) -> Vec<(&'static str, &'static str, String)> {
    RENAMED
        .iter()
        .filter(|(_, new)| get(new).is_none())
        .filter_map(|&(old, new)| get(old).map(|v| (old, new, v)))
        .collect()
}

/// Copies old names onto new ones in this process's environment (call
/// before any thread starts) and returns the warnings to log.
pub fn adopt_legacy() -> Vec<String> {
    legacy(|k| std::env::var(k).ok())
        .into_iter()
        .map(|(old, new, v)| {
            std::env::set_var(new, v);
            format!("environment variable {old} is deprecated: set {new} instead")
        })
        .collect()
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
        let l = legacy(env);
        assert_eq!(
            l,
            vec![("AMQP_URL", "VARGPT_AMQP_URL", "amqp://a".to_string())]
        );
        assert!(RENAMED.iter().all(|(_, new)| new.starts_with("VARGPT_")));
    }
}
