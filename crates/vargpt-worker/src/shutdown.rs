//! Shutdown requests: SIGTERM (Kubernetes, docker stop) and SIGINT (Ctrl-C)
//! flip one flag that every loop watches.

use tokio::sync::watch;
use tracing::info;

/// A cloneable view of "has shutdown been requested?".
#[derive(Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

/// The side that requests shutdown.
pub struct ShutdownTrigger {
    tx: watch::Sender<bool>,
}

pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger { tx }, Shutdown { rx })
}

impl ShutdownTrigger {
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }
}

impl Shutdown {
    pub fn is_requested(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves once shutdown is requested (at once if it already was).
    pub async fn wait(&self) {
        let mut rx = self.rx.clone();
        // An error means the trigger was dropped: treat it as "never".
        if rx.wait_for(|v| *v).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Installs SIGTERM/SIGINT handlers that trigger shutdown.
pub fn on_signals() -> std::io::Result<Shutdown> {
    on_signals_with_trigger().map(|(_, s)| s)
}

/// [`on_signals`], plus the trigger for shutdowns the process decides on
/// itself (its engine died).
pub fn on_signals_with_trigger() -> std::io::Result<(std::sync::Arc<ShutdownTrigger>, Shutdown)> {
    use tokio::signal::unix::{signal, SignalKind};
    let (trigger, shutdown) = channel();
    let trigger = std::sync::Arc::new(trigger);
    let own = trigger.clone();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        info!(
            signal = name,
            "shutdown requested: no new jobs, finishing the ones in flight"
        );
        trigger.trigger();
        // A second signal means "now": unacked jobs go back to the queue.
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        eprintln!("second shutdown signal: exiting without draining");
        std::process::exit(130);
    });
    Ok((own, shutdown))
}
