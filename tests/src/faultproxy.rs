//! A TCP fault proxy for tests: listens on 127.0.0.1:0, forwards each
//! connection to one loopback target, and injects network faults on demand.
//!
//! | mode | existing connections | new connections |
//! |---|---|---|
//! | [`Mode::Pass`] | forwarded both ways | forwarded |
//! | [`Mode::Drop`] | both sockets closed | accepted, closed at once |
//! | [`Mode::Stall`] | nothing forwarded either way, nothing closed; resumes on `Pass` | held open, unconnected |
//! | [`Mode::HalfOpen`] | the target side is closed (the server sees the client go); the client side stays open and silent for good (its bytes are swallowed) | forwarded |
//!
//! Half-open is a middlebox that lost its state: the connections open when
//! it struck never come back, even after the mode returns to `Pass`, and
//! nothing ever tells the client; new connections work. The client must
//! notice by itself (heartbeats, timeouts). The proxy runs on its own thread
//! and runtime, so a test that blocks its own runtime does not freeze it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    Drop,
    Stall,
    HalfOpen,
}

/// What the connection tasks watch: the mode, and how many times a
/// half-open fault struck (a connection older than the last strike is dead).
#[derive(Debug, Clone, Copy)]
struct State {
    mode: Mode,
    half_open_strikes: u64,
}

#[derive(Default)]
struct Counters {
    accepted: AtomicUsize,
    open: AtomicUsize,
}

pub struct FaultProxy {
    addr: SocketAddr,
    state: watch::Sender<State>,
    counters: Arc<Counters>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultProxy {
    /// Starts a proxy in [`Mode::Pass`] to `target`, which must be a loopback
    /// address (tests never aim faults at anything else).
    pub fn start(target: SocketAddr) -> anyhow::Result<Self> {
        anyhow::ensure!(
            target.ip().is_loopback(),
            "the fault proxy only forwards to loopback, not {target}"
        );
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").context("proxy bind")?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let (state, state_rx) = watch::channel(State {
            mode: Mode::Pass,
            half_open_strikes: 0,
        });
        let (stop, stop_rx) = tokio::sync::oneshot::channel();
        let counters = Arc::new(Counters::default());
        let c = counters.clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("proxy runtime")?;
        let thread = std::thread::Builder::new()
            .name(format!("faultproxy-{}", addr.port()))
            .spawn(move || {
                rt.block_on(async move {
                    let Ok(listener) = TcpListener::from_std(std_listener) else {
                        return;
                    };
                    tokio::select! {
                        _ = accept_loop(listener, target, state_rx, c) => {}
                        _ = stop_rx => {}
                    }
                });
                // Dropping the runtime cancels every connection task, which
                // closes their sockets.
            })?;
        Ok(FaultProxy {
            addr,
            state,
            counters,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn set_mode(&self, mode: Mode) {
        self.state.send_modify(|s| {
            s.mode = mode;
            if mode == Mode::HalfOpen {
                s.half_open_strikes += 1;
            }
        });
    }

    pub fn mode(&self) -> Mode {
        self.state.borrow().mode
    }

    /// Connections accepted so far (a reconnecting client raises it).
    pub fn accepted(&self) -> usize {
        self.counters.accepted.load(Ordering::SeqCst)
    }

    /// Connections currently open on the client side.
    pub fn open(&self) -> usize {
        self.counters.open.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    state: watch::Receiver<State>,
    counters: Arc<Counters>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            // Out of descriptors or similar: do not spin.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            continue;
        };
        counters.accepted.fetch_add(1, Ordering::SeqCst);
        if state.borrow().mode == Mode::Drop {
            drop(client);
            continue;
        }
        let state = state.clone();
        let counters = counters.clone();
        tokio::spawn(async move {
            counters.open.fetch_add(1, Ordering::SeqCst);
            serve(client, target, state).await;
            counters.open.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// Waits while a stall holds a new connection; `None` when the proxy is gone.
async fn wait_while_held(state: &mut watch::Receiver<State>) -> Option<State> {
    loop {
        let s = *state.borrow_and_update();
        if s.mode != Mode::Stall {
            return Some(s);
        }
        state.changed().await.ok()?;
    }
}

async fn serve(mut client: TcpStream, target: SocketAddr, mut state: watch::Receiver<State>) {
    // A connection that arrives during a stall hangs unconnected until the
    // stall ends (or the client gives up).
    let Some(born) = wait_while_held(&mut state).await else {
        return;
    };
    if born.mode == Mode::Drop {
        return;
    }
    let Ok(upstream) = TcpStream::connect(target).await else {
        return;
    };
    let (mut ur, mut uw) = upstream.into_split();
    let (mut cr, mut cw) = client.split();
    let (mut cbuf, mut ubuf) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    let (mut client_eof, mut upstream_eof) = (false, false);
    loop {
        let now = *state.borrow_and_update();
        if now.half_open_strikes > born.half_open_strikes {
            // Close the target side for good; swallow the client from now on.
            let _ = uw.shutdown().await;
            drop((ur, uw));
            return half_open(cr, state).await;
        }
        match now.mode {
            Mode::Drop => return,
            Mode::Stall => {
                if state.changed().await.is_err() {
                    return;
                }
            }
            Mode::Pass | Mode::HalfOpen => {
                if client_eof && upstream_eof {
                    return;
                }
                tokio::select! {
                    r = cr.read(&mut cbuf), if !client_eof => match r {
                        Ok(0) | Err(_) => {
                            client_eof = true;
                            let _ = uw.shutdown().await;
                        }
                        Ok(n) => if uw.write_all(&cbuf[..n]).await.is_err() { return },
                    },
                    r = ur.read(&mut ubuf), if !upstream_eof => match r {
                        Ok(0) | Err(_) => {
                            upstream_eof = true;
                            let _ = cw.shutdown().await;
                        }
                        Ok(n) => if cw.write_all(&ubuf[..n]).await.is_err() { return },
                    },
                    c = state.changed() => if c.is_err() { return },
                }
            }
        }
    }
}

/// The client side of a half-open connection: read and discard until the
/// client closes it or the proxy goes away; mode changes do not revive it.
async fn half_open(mut cr: tokio::net::tcp::ReadHalf<'_>, mut state: watch::Receiver<State>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            r = cr.read(&mut buf) => if matches!(r, Ok(0) | Err(_)) { return },
            c = state.changed() => if c.is_err() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::time::Duration;

    /// An echo server on loopback (a plain thread per connection).
    fn echo_server() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 || s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    fn connect(p: &FaultProxy) -> std::net::TcpStream {
        let s = std::net::TcpStream::connect(p.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        s
    }

    fn echo(s: &mut std::net::TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
        s.write_all(msg)?;
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got)?;
        Ok(got)
    }

    #[test]
    fn pass_forwards_both_ways() {
        let p = FaultProxy::start(echo_server()).unwrap();
        let mut s = connect(&p);
        assert_eq!(echo(&mut s, b"hello").unwrap(), b"hello");
        assert_eq!(p.accepted(), 1);
    }

    #[test]
    fn drop_closes_open_connections_and_refuses_new_ones() {
        let p = FaultProxy::start(echo_server()).unwrap();
        let mut s = connect(&p);
        assert_eq!(echo(&mut s, b"a").unwrap(), b"a");
        p.set_mode(Mode::Drop);
        let mut buf = [0u8; 1];
        assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)), "closed");
        let mut late = connect(&p);
        assert!(matches!(late.read(&mut buf), Ok(0) | Err(_)), "refused");
        p.set_mode(Mode::Pass);
        let mut again = connect(&p);
        assert_eq!(echo(&mut again, b"b").unwrap(), b"b");
    }

    #[test]
    fn stall_holds_bytes_until_it_clears() {
        let p = FaultProxy::start(echo_server()).unwrap();
        let mut s = connect(&p);
        assert_eq!(echo(&mut s, b"1").unwrap(), b"1");
        p.set_mode(Mode::Stall);
        s.write_all(b"2").unwrap();
        let mut buf = [0u8; 1];
        let e = s.read(&mut buf).unwrap_err();
        assert!(matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ));
        p.set_mode(Mode::Pass);
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"2", "the stalled byte arrives once the stall ends");
    }

    #[test]
    fn half_open_closes_the_server_side_and_silences_the_client_side_for_good() {
        // A server that reports when its side of the first connection closes.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let target = l.local_addr().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for (i, s) in l.incoming().enumerate() {
                let Ok(mut s) = s else { continue };
                let tx = tx.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 || s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = tx.send(i);
                });
            }
        });
        let p = FaultProxy::start(target).unwrap();
        let mut s = connect(&p);
        assert_eq!(echo(&mut s, b"x").unwrap(), b"x");
        p.set_mode(Mode::HalfOpen);
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(5)),
            Ok(0),
            "the server sees its connection closed"
        );
        // The client's side is still open: writes succeed, nothing comes back.
        s.write_all(b"y").unwrap();
        let mut buf = [0u8; 1];
        let silent = |s: &mut std::net::TcpStream, buf: &mut [u8; 1]| {
            let e = s.read(buf).unwrap_err();
            assert!(matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ));
        };
        silent(&mut s, &mut buf);
        // New connections work, during the fault and after it; the old one
        // stays dead.
        let mut during = connect(&p);
        assert_eq!(echo(&mut during, b"d").unwrap(), b"d");
        p.set_mode(Mode::Pass);
        let mut after = connect(&p);
        assert_eq!(echo(&mut after, b"a").unwrap(), b"a");
        assert_eq!(echo(&mut during, b"e").unwrap(), b"e");
        silent(&mut s, &mut buf);
    }

    #[test]
    fn only_loopback_targets() {
        assert!(FaultProxy::start("10.1.2.3:80".parse().unwrap()).is_err());
    }
}
