//! Dev-only tools of vargpt-rs. Production crates never depend on this one: it
//! embeds files of `tests/fixtures` (the tiny reference's tokenizer and config).
//!
//! [`checkpoint`]: the random-weight checkpoint maker (any size, published layout).

pub mod checkpoint;

pub use checkpoint::{
    layout, make_checkpoint, CheckpointError, CheckpointSpec, Fill, Layout, StoredDtype,
};
