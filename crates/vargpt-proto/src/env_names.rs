//! One naming rule for environment variables across the binaries:
//! `VARGPT_<FLAG>` (the standard AWS_* and HF_* variables aside). Each binary
//! lists the names it used before the rule; they are still read, with a
//! warning, through these two functions.

/// The renames to apply: old names that are set while their new name is
/// not. Returns (old, new, value).
pub fn legacy(
    renamed: &[(&'static str, &'static str)],
    get: impl Fn(&str) -> Option<String>,
) -> Vec<(&'static str, &'static str, String)> {
    renamed
        .iter()
        .filter(|(_, new)| get(new).is_none())
        .filter_map(|&(old, new)| get(old).map(|v| (old, new, v)))
        .collect()
}

/// Copies old names onto new ones in this process's environment and returns
/// the warnings to log. Call before any other thread starts.
pub fn adopt_legacy(renamed: &[(&'static str, &'static str)]) -> Vec<String> {
    legacy(renamed, |k| std::env::var(k).ok())
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
        let renamed = [
            ("A_OLD", "VARGPT_A"),
            ("B_OLD", "VARGPT_B"),
            ("C_OLD", "VARGPT_C"),
        ];
        let env = |k: &str| match k {
            "A_OLD" => Some("a".to_string()),
            "B_OLD" => Some("old b".to_string()),
            "VARGPT_B" => Some("new b".to_string()),
            _ => None,
        };
        assert_eq!(
            legacy(&renamed, env),
            vec![("A_OLD", "VARGPT_A", "a".to_string())]
        );
    }
}
