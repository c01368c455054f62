//! vargpt-worker: the job worker of the VARGPT service.
//!
//! Data path: a transport ([`amqp`] or [`embedded`]) yields messages; the
//! [`pipeline`] validates them (with `vargpt-proto`), runs them on a
//! [`backend::Backend`], stores generated images in a [`store`], and settles
//! each message (result published and confirmed, then ack). [`serve`] wires
//! the service mode together with [`health`] and [`metrics`].

pub mod amqp;
pub mod backend;
pub mod config;
pub mod embedded;
pub mod env_compat;
pub mod failure;
pub mod fake;
pub mod gpu_stats;
pub mod health;
pub mod load;
pub mod logging;
pub mod metrics;
pub mod pipeline;
pub mod provenance;
pub mod serve;
pub mod shutdown;
pub mod store;
