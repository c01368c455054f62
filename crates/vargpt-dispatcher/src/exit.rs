//! Process exit codes, with the same meaning as the worker's (see the README).

/// Every job in the output succeeded.
pub const OK: i32 = 0;
/// Some jobs failed (see the failures file), or the run itself failed at
/// run time (broker unreachable, a job queue missing, an I/O error).
pub const FAILED: i32 = 1;
/// The command line or the configuration is wrong; nothing was sent.
pub const USAGE: i32 = 2;
/// Stopped by Ctrl-C / SIGTERM; the same command resumes.
pub const INTERRUPTED: i32 = 130;

/// An error of the command line or the configuration found by the run
/// itself (a bad manifest line, a job queue that does not exist): the run
/// exits with [`USAGE`], not [`FAILED`].
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct UsageError(pub anyhow::Error);

/// Marks `e` as a [`UsageError`].
pub fn usage(e: anyhow::Error) -> anyhow::Error {
    anyhow::Error::new(UsageError(e))
}

/// The exit code of a run that ended with `e`.
pub fn code_of(e: &anyhow::Error) -> i32 {
    if e.is::<UsageError>() {
        USAGE
    } else {
        FAILED
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_errors_exit_with_2_and_keep_their_message() {
        let e = usage(anyhow::anyhow!("jobs.jsonl:2: vqa needs a prompt"));
        assert_eq!(code_of(&e), USAGE);
        assert_eq!(format!("{e:#}"), "jobs.jsonl:2: vqa needs a prompt");
        assert_eq!(code_of(&anyhow::anyhow!("broker down")), FAILED);
    }
}
