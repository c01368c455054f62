//! Helpers shared by the fuzz targets in `fuzz_targets/`.

pub mod alloc_meter;

/// The worker's header reading, compiled from its own source file so the
/// `amqp` target fuzzes the real code (the worker crate itself is too heavy
/// for a sanitizer build). If this stops compiling, the file gained a
/// dependency: extend the stand-ins below.
#[path = "../../crates/vargpt-worker/src/amqp/headers.rs"]
pub mod worker_headers;

/// Stand-in for the worker's `pipeline` module: `Meta` with the worker's fields.
pub mod pipeline {
    use std::time::{Instant, SystemTime};

    #[derive(Debug)]
    pub struct Meta {
        pub message_id: Option<String>,
        pub reply_to: Option<String>,
        pub correlation_id: Option<String>,
        pub attempt: u32,
        pub previous_deliveries: u32,
        pub enqueued_at: Option<SystemTime>,
        pub received_at: Instant,
        pub received_at_wall: SystemTime,
    }

    impl Meta {
        pub fn new() -> Self {
            Meta {
                message_id: None,
                reply_to: None,
                correlation_id: None,
                attempt: 1,
                previous_deliveries: 0,
                enqueued_at: None,
                received_at: Instant::now(),
                received_at_wall: SystemTime::now(),
            }
        }
    }

    impl Default for Meta {
        fn default() -> Self {
            Self::new()
        }
    }
}
