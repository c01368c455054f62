//! `vargpt-dispatcher run …`: see `vargpt-dispatcher run --help`.
//!
//! Exit codes (as the worker's): 0 all jobs succeeded, 1 some jobs failed or
//! the run failed, 2 usage or configuration error, 130 interrupted.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use vargpt_dispatcher::cli::{Cli, Command, RunArgs};
use vargpt_dispatcher::exit;

fn main() -> ExitCode {
    // Before clap reads the environment, and before any thread starts.
    let renamed = vargpt_dispatcher::env_compat::adopt_legacy();
    let cli = Cli::parse();
    // lapin logs expected channel closes (a failed passive declare) as
    // errors; the dispatcher reports every broker error itself.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("warn,lapin=off,vargpt_dispatcher=info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    for warning in renamed {
        tracing::warn!("{warning}");
    }
    match cli.command {
        Command::Run(args) => run(*args),
        Command::Table(args) => {
            match vargpt_dispatcher::table::write_table(&args.output, &args.table) {
                Ok(rows) => {
                    println!("{rows} rows: {}", args.table.display());
                    code(exit::OK)
                }
                Err(e) => {
                    eprintln!("error: {}: {e}", args.table.display());
                    code(exit::FAILED)
                }
            }
        }
    }
}

fn code(c: i32) -> ExitCode {
    ExitCode::from(u8::try_from(c).unwrap_or(1))
}

fn run(args: RunArgs) -> ExitCode {
    let config = match args.into_config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e:#}");
            return code(exit::USAGE);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return code(exit::FAILED);
        }
    };
    let outcome = runtime.block_on(vargpt_dispatcher::run(config, shutdown_signal()));
    match outcome {
        Ok(report) => {
            println!("{}", report.stats);
            if let Some(path) = &report.failures_file {
                println!("failures: {}", path.display());
            }
            if let Some((path, rows)) = &report.table {
                println!("table: {} ({rows} rows)", path.display());
            }
            if report.interrupted {
                eprintln!("interrupted; run the same command again to resume");
            }
            code(report.exit_code())
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            code(exit::code_of(&e))
        }
    }
}

/// Ctrl-C or SIGTERM (`docker stop`, Kubernetes).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
