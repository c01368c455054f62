//! `vargpt`: VARGPT caption / VQA / chat / text-to-image from the command line.
//!
//! Exit status: 0 on success, 1 on any error (message on stderr), 2 on a
//! command-line usage error.

// Tensors of up to tens of MB are allocated and freed every step: see
// vargpt-alloc for why mimalloc, kept warm, is the allocator.
#[global_allocator]
static GLOBAL: vargpt_alloc::MiMalloc = vargpt_alloc::MiMalloc;

mod args;
mod info;
mod output;
mod progress;
mod run;

use clap::Parser;
use std::process::ExitCode;

fn init_logging(verbose: bool) {
    let default = if verbose { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// True when the failure is stdout going away (`vargpt … | head`).
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn main() -> ExitCode {
    vargpt_alloc::configure();
    let cli = args::Cli::parse();
    init_logging(cli.command.verbose());
    match run::run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("vargpt: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
