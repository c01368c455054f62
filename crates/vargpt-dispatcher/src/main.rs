//! `vargpt-dispatcher run …`: see `vargpt-dispatcher run --help`.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use vargpt_dispatcher::cli::{Cli, Command};

/// Exit code of a run that could not do its work (bad input, broker down, …).
const EXIT_ERROR: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // lapin logs expected channel closes (a failed passive declare) as
    // errors; the dispatcher reports every broker error itself.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("warn,lapin=off,vargpt_dispatcher=info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let Command::Run(args) = cli.command;
    let outcome = runtime.block_on(async {
        let config = args.into_config()?;
        vargpt_dispatcher::run(config, shutdown_signal()).await
    });
    match outcome {
        Ok(report) => {
            println!("{}", report.stats);
            if let Some(path) = &report.failures_file {
                println!("failures: {}", path.display());
            }
            if report.interrupted {
                eprintln!("interrupted; run the same command again to resume");
            }
            ExitCode::from(u8::try_from(report.exit_code()).unwrap_or(EXIT_ERROR))
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_ERROR)
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
