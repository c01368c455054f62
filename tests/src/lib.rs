//! The one place integration tests start their services from.
//!
//! * [`services`]: RabbitMQ (started with `rabbitmq-server -detached` if it
//!   is not listening) and an `s3s-fs` S3 server per test on a free loopback
//!   port with a temporary root.
//! * [`broker`]: a test client for RabbitMQ (publish jobs, collect results and
//!   dead letters, force-close a worker's connection, clean up).
//! * [`worker`]: a worker child process with its logs kept for failures.
//! * [`cluster`]: a 3-node RabbitMQ cluster (`tests/cluster/cluster.sh`)
//!   whose nodes a test may kill -9 and restart.
//! * [`faultproxy`]: a loopback TCP proxy that drops, stalls or half-opens
//!   the connections running through it.
//! * [`tally`]: every result per job id, for counting lost jobs and duplicates.
//!
//! Every test uses its own queue prefix ([`unique_prefix`]) so tests run in
//! parallel against one broker without seeing each other's messages.

pub mod broker;
pub mod cluster;
pub mod faultproxy;
pub mod http;
pub mod services;
pub mod tally;
pub mod worker;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The reference tiny model directory.
pub fn tiny_model() -> PathBuf {
    repo_root().join("tests/fixtures/reference-tiny")
}

/// `it-{name}-{pid}-{n}-{time}`: unique across tests and runs.
pub fn unique_prefix(name: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() % 1_000_000);
    format!(
        "it-{name}-{}-{}-{t}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// Set `VARGPT_IT_FAKE_BACKEND=1` to run the real-model tests on the fake
/// backend (for developing the tests while the engine is being built).
pub fn force_fake_backend() -> bool {
    std::env::var("VARGPT_IT_FAKE_BACKEND").is_ok_and(|v| v == "1")
}
