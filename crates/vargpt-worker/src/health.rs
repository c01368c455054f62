//! The HTTP side: `/metrics`, `/healthz` (the process is alive) and
//! `/readyz` (it takes jobs: model loaded, storage reachable, broker
//! connected, not draining).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::metrics::Metrics;

/// The readiness checks; every change is mirrored into `vargpt_ready`.
pub struct Readiness {
    model: AtomicBool,
    /// `None` until checked; then `Ok` or the reason it is unreachable.
    store: Mutex<Option<Result<(), String>>>,
    broker: AtomicBool,
    /// Why the broker counts as stalled (a publish confirm timed out), if it does.
    broker_stalled: Mutex<Option<String>>,
    draining: AtomicBool,
    /// False once the engine died (its batching thread is gone): the
    /// process is then unhealthy, not just unready, and must restart.
    engine_alive: AtomicBool,
    metrics: Arc<Metrics>,
}

impl Readiness {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Readiness {
            model: AtomicBool::new(false),
            store: Mutex::new(None),
            broker: AtomicBool::new(false),
            broker_stalled: Mutex::new(None),
            draining: AtomicBool::new(false),
            engine_alive: AtomicBool::new(true),
            metrics,
        }
    }

    pub fn set_model_loaded(&self) {
        self.model.store(true, Ordering::SeqCst);
        self.refresh();
    }

    pub fn set_store(&self, state: Result<(), String>) {
        *self.store.lock().unwrap_or_else(|e| e.into_inner()) = Some(state);
        self.refresh();
    }

    pub fn set_broker(&self, connected: bool) {
        self.broker.store(connected, Ordering::SeqCst);
        self.refresh();
    }

    /// `Some(why)` when the broker stopped answering, `None` once it does.
    pub fn set_broker_stalled(&self, why: Option<String>) {
        let mut s = self
            .broker_stalled
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if s.is_some() != why.is_some() {
            *s = why;
            drop(s);
            self.refresh();
        }
    }

    pub fn set_engine_dead(&self) {
        self.engine_alive.store(false, Ordering::SeqCst);
        self.metrics.engine_alive.set(0);
        self.refresh();
    }

    /// The process can go on (`/healthz`): false once the engine died.
    pub fn is_alive(&self) -> bool {
        self.engine_alive.load(Ordering::SeqCst)
    }

    fn broker_stalled(&self) -> Option<String> {
        self.broker_stalled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.refresh();
    }

    fn store_ok(&self) -> bool {
        matches!(
            *self.store.lock().unwrap_or_else(|e| e.into_inner()),
            Some(Ok(()))
        )
    }

    pub fn is_ready(&self) -> bool {
        self.model.load(Ordering::SeqCst)
            && self.store_ok()
            && self.broker.load(Ordering::SeqCst)
            && self.broker_stalled().is_none()
            && !self.draining.load(Ordering::SeqCst)
            && self.is_alive()
    }

    fn refresh(&self) {
        self.metrics.ready.set(i64::from(self.is_ready()));
    }

    pub fn report(&self) -> serde_json::Value {
        let store = match &*self.store.lock().unwrap_or_else(|e| e.into_inner()) {
            None => "not checked yet".to_string(),
            Some(Ok(())) => "ok".to_string(),
            Some(Err(e)) => format!("unreachable: {e}"),
        };
        let broker = match (self.broker.load(Ordering::SeqCst), self.broker_stalled()) {
            (false, _) => "disconnected".to_string(),
            (true, Some(why)) => why,
            (true, None) => "connected".to_string(),
        };
        let model = match (self.model.load(Ordering::SeqCst), self.is_alive()) {
            (_, false) => "dead: the engine's batching thread is gone",
            (true, true) => "loaded",
            (false, true) => "loading",
        };
        json!({
            "ready": self.is_ready(),
            "model": model,
            "store": store,
            "broker": broker,
            "draining": self.draining.load(Ordering::SeqCst),
        })
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
}

pub fn router(metrics: Arc<Metrics>, readiness: Arc<Readiness>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz_handler))
        .route("/readyz", get(readyz_handler))
        .with_state(AppState { metrics, readiness })
}

async fn metrics_handler(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}

async fn healthz_handler(State(s): State<AppState>) -> impl IntoResponse {
    if s.readiness.is_alive() {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "engine dead\n")
    }
}

async fn readyz_handler(State(s): State<AppState>) -> impl IntoResponse {
    let code = if s.readiness.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(s.readiness.report()))
}

/// Binds first (so a bad address fails start-up), then serves in the background.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = router(metrics, readiness);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "health server stopped");
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_everything_is() {
        let m = Arc::new(Metrics::new().unwrap());
        let r = Readiness::new(m.clone());
        assert!(!r.is_ready());
        r.set_model_loaded();
        r.set_broker(true);
        assert!(!r.is_ready());
        r.set_store(Err("connection refused".into()));
        assert!(!r.is_ready());
        assert!(r.report()["store"]
            .as_str()
            .unwrap()
            .contains("connection refused"));
        r.set_store(Ok(()));
        assert!(r.is_ready());
        assert_eq!(m.ready.get(), 1);
        r.set_broker_stalled(Some("broker stalled: no confirm".into()));
        assert!(!r.is_ready());
        assert!(r.report()["broker"].as_str().unwrap().contains("stalled"));
        r.set_broker_stalled(None);
        assert!(r.is_ready());
        r.set_engine_dead();
        assert!(!r.is_ready() && !r.is_alive());
        assert_eq!(m.engine_alive.get(), 0);
        r.set_draining();
        assert!(!r.is_ready());
        assert_eq!(m.ready.get(), 0);
    }
}
