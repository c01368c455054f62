//! The RabbitMQ transport (lapin): topology, connection, job source, result sink.

pub mod connect;
pub mod headers;
pub mod sink;
pub mod source;
pub mod topology;

pub use connect::{connect, redacted, AmqpSettings, Session};
pub use sink::AmqpSink;
pub use source::AmqpSource;
pub use topology::Topology;
