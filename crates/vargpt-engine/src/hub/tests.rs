//! The hub client honours the settings: offline mode never connects, and a
//! download goes to `HF_ENDPOINT` with the token (checked with a local listener
//! standing in for the hub).

use super::*;
use settings::Token;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::Duration;

fn settings(endpoint: &str, cache: &Path, offline: bool) -> HubSettings {
    HubSettings {
        endpoint: endpoint.to_string(),
        cache_dir: cache.to_path_buf(),
        token: Token::new("hf_test_secret"),
        token_path: cache.join("no-token-file"),
        offline,
        no_progress_bars: true,
    }
}

#[test]
fn offline_mode_never_connects() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let cache = tempfile::tempdir().unwrap();
    let err = resolve_model_with(
        "owner/absent",
        None,
        &settings(&endpoint, cache.path(), true),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("owner/absent") && err.contains("HF_HUB_OFFLINE"),
        "{err}"
    );
    assert!(
        listener.accept().is_err(),
        "offline resolution connected to the endpoint"
    );
}

#[test]
fn downloads_go_to_the_endpoint_with_the_token() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let Ok((stream, _)) = listener.accept() else {
            return;
        };
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut head = Vec::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                break;
            }
            head.push(line.trim_end().to_string());
        }
        let mut stream = stream;
        let _ = stream
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        let _ = tx.send(head);
    });
    let cache = tempfile::tempdir().unwrap();
    let err = resolve_model_with(
        "owner/gated",
        None,
        &settings(&endpoint, cache.path(), false),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains(&endpoint), "{err}");
    assert!(!err.contains("hf_test_secret"), "the token leaked: {err}");
    let head = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("no request reached the endpoint");
    assert_eq!(
        head[0], "GET /owner/gated/resolve/main/config.json HTTP/1.1",
        "{head:?}"
    );
    assert!(
        head.iter()
            .any(|h| h.eq_ignore_ascii_case("authorization: Bearer hf_test_secret")),
        "{head:?}"
    );
}
