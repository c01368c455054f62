//! Process exit codes, the same in every binary (worker, dispatcher, CLI).

/// Everything worked.
pub const OK: i32 = 0;
/// The run failed or some of its jobs did (a runtime error, a job error).
pub const FAILED: i32 = 1;
/// The command line or the configuration is wrong; nothing was run.
pub const USAGE: i32 = 2;
