//! Log set-up: `RUST_LOG` filters (default `info`), text or JSON lines on
//! stderr. Every job's lines carry its `job_id` through the job span.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// lapin and amq-protocol log every frame at trace level, the connection's
/// login frame (user and password) among them. These targets are held at
/// debug whatever `RUST_LOG` asks, so no log level can print a secret.
const FRAME_LOGGERS: &[&str] = &["lapin", "amq_protocol"];

pub fn init(format: LogFormat) {
    let filter = filter(std::env::var("RUST_LOG").ok().as_deref());
    // Colour codes only for a terminal: files and log collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // A closed stderr must not take jobs down with it: by default the
    // subscriber reports write errors with eprintln!, which then panics.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .log_internal_errors(false);
    // `try_init`: a second call (tests) keeps the first subscriber.
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// The filter for a `RUST_LOG` value: its directives, less any that name a
/// frame logger, plus the cap on those.
pub fn filter(rust_log: Option<&str>) -> EnvFilter {
    let user: Vec<&str> = rust_log
        .unwrap_or("info")
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .filter(|d| !FRAME_LOGGERS.iter().any(|t| d.starts_with(t)))
        .collect();
    let user = if user.is_empty() {
        "info".to_string()
    } else {
        user.join(",")
    };
    let mut f = EnvFilter::try_new(&user).unwrap_or_else(|_| EnvFilter::new("info"));
    for t in FRAME_LOGGERS {
        if let Ok(d) = format!("{t}=debug").parse() {
            f = f.add_directive(d);
        }
    }
    // lapin warns of a returned message with its whole body; the sink logs
    // the return itself, bounded.
    if let Ok(d) = "lapin::returned_messages=error".parse() {
        f = f.add_directive(d);
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::fmt::MakeWriter;

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Capture {
        type Writer = Capture;
        fn make_writer(&'a self) -> Capture {
            self.clone()
        }
    }

    fn logged(rust_log: &str) -> String {
        let out = Capture::default();
        let sub = tracing_subscriber::fmt()
            .with_env_filter(filter(Some(rust_log)))
            .with_writer(out.clone())
            .finish();
        tracing::subscriber::with_default(sub, || {
            tracing::trace!(target: "lapin::io_loop", "will write frame start-ok PASSWORD");
            tracing::trace!(target: "amq_protocol::frame", "PASSWORD again");
            tracing::debug!(target: "lapin::channel", "channel opened");
            tracing::trace!(target: "vargpt_worker::x", "our trace");
        });
        let s = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        s
    }

    #[test]
    fn frame_loggers_never_log_at_trace() {
        for rust_log in [
            "trace",
            "lapin=trace",
            "trace,lapin=trace,amq_protocol=trace",
            "lapin::io_loop=trace,trace",
            "amq_protocol::frame=trace,vargpt_worker=trace",
        ] {
            let s = logged(rust_log);
            assert!(!s.contains("PASSWORD"), "{rust_log}: {s}");
        }
        let s = logged("trace");
        assert!(s.contains("our trace"), "{s}");
        assert!(s.contains("channel opened"), "{s}");
    }
}
