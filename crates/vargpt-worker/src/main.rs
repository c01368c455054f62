//! `vargpt-worker serve` (RabbitMQ + S3) and `vargpt-worker embedded` (no services).

// Tensors of up to tens of MB are allocated and freed every step: see
// vargpt-alloc for why mimalloc, kept warm, is the allocator.
#[global_allocator]
static GLOBAL: vargpt_alloc::MiMalloc = vargpt_alloc::MiMalloc;

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use vargpt_worker::config::{Cli, Command};

fn main() -> anyhow::Result<()> {
    vargpt_alloc::configure();
    let cli = Cli::parse();
    vargpt_worker::logging::init(cli.log_format);
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let outcome = match cli.command {
        Command::Serve(args) => runtime
            .block_on(vargpt_worker::serve::run(*args))
            .map(|()| 0),
        Command::Embedded(args) => runtime
            .block_on(vargpt_worker::embedded::run(*args))
            // Distinguishable from a crash (1): the run worked, some jobs failed.
            .map(|summary| if summary.errors > 0 { 2 } else { 0 }),
    };
    // Do not wait for inference threads that outlived the grace period: their
    // messages are unacked and go back to the queue.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match outcome {
        Ok(0) => Ok(()),
        Ok(code) => std::process::exit(code),
        Err(e) => Err(e),
    }
}
