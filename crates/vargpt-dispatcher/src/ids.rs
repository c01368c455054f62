//! Job ids: deterministic, so that re-running the same command gives every
//! item the same id and the output file can tell what is already done.
//!
//! A derived id is a readable part (the item's path, sanitized to the id
//! alphabet) and a hash of everything that makes the job what it is (path,
//! kind, prompt, params, model): `cats-tabby.png-3f2a9c0d1e4b5a67`. Two paths
//! that sanitize alike still differ by their hash, and the same image asked a
//! different question is a different job.

use sha2::{Digest, Sha256};

/// The contract's limit (proto `Job.id`).
pub const MAX_ID_LEN: usize = vargpt_proto::JOB_ID_MAX_LEN;
/// Hex digits of the hash part: 64 bits, collision-free in practice for any
/// dataset a dispatcher run will see.
const HASH_HEX: usize = 16;
/// Room left for the readable part (`name-hash`).
const MAX_NAME_LEN: usize = MAX_ID_LEN - HASH_HEX - 1;

/// The id of the item called `name` (a relative path, an S3 key, …) whose
/// job is described by `fields` (kind, prompt, …, in a fixed order).
pub fn derive_id(name: &str, fields: &[&str]) -> String {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    for field in fields {
        // A separator byte that cannot appear in UTF-8 text keeps
        // ("ab", "c") and ("a", "bc") apart.
        h.update([0xff]);
        h.update(field.as_bytes());
    }
    let digest = hex::encode(h.finalize());
    let hash = &digest[..HASH_HEX];
    let readable = sanitize(name);
    if readable.is_empty() {
        hash.to_string()
    } else {
        format!("{readable}-{hash}")
    }
}

/// `name` in the id alphabet `[A-Za-z0-9._:-]`: other characters (path
/// separators included) become `-`, runs of `-` collapse, leading dots and
/// dashes go, and only the last part is kept when too long (the file
/// name is the informative end of a path).
pub fn sanitize(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        let c = if c.is_ascii_alphanumeric() || "._:-".contains(c) {
            c
        } else {
            '-'
        };
        if c == '-' && out.ends_with('-') {
            continue;
        }
        out.push(c);
    }
    let trimmed = out.trim_start_matches(['.', '-']).trim_end_matches('-');
    // Only ASCII remains, so byte offsets are character offsets.
    let tail = &trimmed[trimmed.len().saturating_sub(MAX_NAME_LEN)..];
    tail.trim_start_matches(['.', '-']).to_string()
}

/// Checks a user-given id against the contract (the same rule the worker applies).
pub fn check_id(id: &str) -> Result<(), String> {
    vargpt_proto::check_id(id).map_err(|e| e.message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_readable_and_valid() {
        let a = derive_id("cats/tabby cat.png", &["caption", ""]);
        assert_eq!(a, derive_id("cats/tabby cat.png", &["caption", ""]));
        assert!(a.starts_with("cats-tabby-cat.png-"), "{a}");
        assert_eq!(a.len(), "cats-tabby-cat.png-".len() + 16);
        check_id(&a).unwrap();
    }

    #[test]
    fn anything_that_changes_the_job_changes_the_id() {
        let base = derive_id("a.png", &["caption", ""]);
        assert_ne!(base, derive_id("b.png", &["caption", ""]));
        assert_ne!(base, derive_id("a.png", &["vqa", "what?"]));
        assert_ne!(base, derive_id("a.png", &["caption", "describe"]));
        // Field boundaries matter.
        assert_ne!(derive_id("x", &["ab", "c"]), derive_id("x", &["a", "bc"]));
    }

    #[test]
    fn paths_that_sanitize_alike_still_differ() {
        let a = derive_id("a/b c.png", &[]);
        let b = derive_id("a b/c.png", &[]);
        assert_eq!(a[..a.len() - 16], b[..b.len() - 16]);
        assert_ne!(a, b);
    }

    #[test]
    fn sanitizing_handles_odd_names() {
        assert_eq!(sanitize("../.hidden/é x.png"), "hidden-x.png");
        assert_eq!(sanitize("a_b c"), "a_b-c");
        assert_eq!(sanitize("日本"), "");
        assert_eq!(derive_id("日本", &[]).len(), 16);
        let long = format!("{}/{}", "d".repeat(300), "file.png");
        let id = derive_id(&long, &["caption"]);
        assert!(id.len() <= MAX_ID_LEN);
        assert!(id.contains("file.png-"), "{id}");
        check_id(&id).unwrap();
    }

    #[test]
    fn user_ids_are_checked() {
        check_id("img-001:v2.a_b").unwrap();
        assert!(check_id("").is_err());
        assert!(check_id(".x").is_err());
        assert!(check_id("a/b").unwrap_err().contains("'/'"));
        assert!(check_id(&"x".repeat(129)).is_err());
    }
}
