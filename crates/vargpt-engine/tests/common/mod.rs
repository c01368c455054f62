//! Helpers shared by the engine's integration tests (each test file uses a part).
#![allow(dead_code)]

pub mod parity;
pub mod tp;
