//! The part of lapin's API that `vargpt-worker/src/amqp/headers.rs` uses: the
//! same amq-protocol types lapin re-exports.

pub use amq_protocol::protocol::BasicProperties;
pub use amq_protocol::types;
