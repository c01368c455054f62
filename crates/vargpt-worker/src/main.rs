//! `vargpt-worker serve` (RabbitMQ + S3) and `vargpt-worker embedded` (no services).
//!
//! Exit codes (`vargpt_proto::exit_code`, the same in every binary): 0 all
//! done; 1 the run failed or some jobs did; 2 bad command line or settings.

// Tensors of up to tens of MB are allocated and freed every step: see
// vargpt-alloc for why mimalloc, kept warm, is the allocator.
#[global_allocator]
static GLOBAL: vargpt_alloc::MiMalloc = vargpt_alloc::MiMalloc;

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use vargpt_proto::exit_code;
use vargpt_worker::config::{Cli, Command, ConfigError};

fn main() {
    vargpt_alloc::configure();
    // Before any thread exists: old variable names are copied to new ones.
    let renamed = vargpt_worker::env_compat::adopt_legacy();
    let cli = Cli::parse(); // exits with 2 on a bad command line
    vargpt_worker::logging::init(cli.log_format);
    for w in renamed {
        tracing::warn!("{w}");
    }
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            let usage = e.chain().any(|c| c.downcast_ref::<ConfigError>().is_some());
            tracing::error!(error = format!("{e:#}"), "worker failed");
            eprintln!("Error: {e:#}");
            if usage {
                exit_code::USAGE
            } else {
                exit_code::FAILED
            }
        }
    };
    std::process::exit(code);
}

fn run(cli: Cli) -> anyhow::Result<i32> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let outcome = match cli.command {
        Command::Serve(args) => runtime.block_on(vargpt_worker::serve::run(*args)),
        Command::Embedded(args) => {
            runtime
                .block_on(vargpt_worker::embedded::run(*args))
                .map(|summary| {
                    if summary.errors > 0 {
                        exit_code::FAILED
                    } else {
                        exit_code::OK
                    }
                })
        }
    };
    // Do not wait for inference threads that outlived the grace period: their
    // messages are unacked and go back to the queue.
    runtime.shutdown_timeout(Duration::from_secs(1));
    outcome
}
