//! Connecting to the broker (amqp:// or amqps://), with back-off, without
//! ever logging the URL's credentials.
//!
//! The URL setting may name several brokers (the nodes of a cluster) as a
//! comma-separated list; each (re)connect tries them in turn, starting with
//! the one that worked last, and backs off only after a whole round failed.
//! A comma inside credentials must be percent-encoded (`%2C`).

use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lapin::options::{BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::tcp::OwnedTLSConfig;
use lapin::types::FieldTable;
use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, ConnectionProperties, Consumer};
use tracing::{error, info, warn};

use super::topology::Topology;
use crate::config::Secret;
use crate::shutdown::Shutdown;

#[derive(Debug, Clone)]
pub struct AmqpSettings {
    pub url: Secret,
    /// Extra CA certificates (PEM text) for amqps://, e.g. a private CA.
    pub ca_pem: Option<String>,
    pub connection_name: String,
    pub prefetch: u16,
    pub max_backoff: Duration,
}

/// Upper bound on opening one connection (TCP, TLS, AMQP handshake, topology,
/// consumer): a broker that accepts but never answers must not hold the
/// worker forever, nor keep it from trying the next node.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Heartbeat interval asked of the broker, seconds (RabbitMQ's default: 60).
pub const HEARTBEAT_SECS: u16 = 15;

/// The broker URLs of the setting: one URL or a comma-separated list
/// (blanks around entries ignored, empty entries skipped).
pub fn broker_urls(setting: &str) -> Vec<&str> {
    setting
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect()
}

/// Checks every URL of the setting parses, without echoing any of them
/// (the parser's message may quote the credentials): `Err` names the
/// position of the first bad one, counting from 1.
pub fn check_broker_urls(setting: &str) -> Result<usize, UrlListError> {
    let urls = broker_urls(setting);
    if urls.is_empty() {
        return Err(UrlListError::Empty);
    }
    for (i, u) in urls.iter().enumerate() {
        if AMQPUri::from_str(u).is_err() {
            return Err(UrlListError::Unparsable { position: i + 1 });
        }
    }
    Ok(urls.len())
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UrlListError {
    #[error("the AMQP URL setting names no broker")]
    Empty,
    #[error("AMQP URL number {position} of the list does not parse (its text is not shown: it may hold credentials)")]
    Unparsable { position: usize },
}

/// The order to try `n` brokers in, starting with `first` and wrapping round.
pub fn rotation(first: usize, n: usize) -> impl Iterator<Item = usize> {
    let first = if n == 0 { 0 } else { first % n };
    (0..n).map(move |i| (first + i) % n)
}

/// The position of the broker that accepted the last connection: the next
/// reconnect starts there. One per process (a worker has one broker setting).
static LAST_GOOD: AtomicUsize = AtomicUsize::new(0);

/// The URL (or each URL of a list) without user and password, for logs.
pub fn redacted(setting: &str) -> String {
    let urls = broker_urls(setting);
    if urls.len() <= 1 {
        return redacted_one(urls.first().copied().unwrap_or(setting));
    }
    urls.iter()
        .map(|u| redacted_one(u))
        .collect::<Vec<_>>()
        .join(",")
}

fn redacted_one(url: &str) -> String {
    match AMQPUri::from_str(url) {
        Ok(u) => format!(
            "{}://{}:{}/{}",
            if matches!(u.scheme, lapin::uri::AMQPScheme::AMQPS) {
                "amqps"
            } else {
                "amqp"
            },
            u.authority.host,
            u.authority.port,
            if u.vhost == "/" {
                "%2f"
            } else {
                u.vhost.as_str()
            }
        ),
        Err(_) => "<unparsable AMQP URL>".to_string(),
    }
}

/// An open connection with the topology declared and a consumer running.
pub struct Session {
    pub connection: Connection,
    pub publish: Channel,
    pub consume: Channel,
    /// Deliveries from the jobs queue (prefetch as configured).
    pub consumer: Consumer,
    /// Deliveries from the suspect queue (prefetch 1).
    pub suspects: Consumer,
}

/// Why one connection attempt failed; never carries the URL.
#[derive(Debug, thiserror::Error)]
enum OpenError {
    #[error("unparsable AMQP URL")]
    BadUrl,
    #[error("{0}")]
    Amqp(#[from] lapin::Error),
    #[error("no answer within {0:?} while {1}")]
    Timeout(Duration, &'static str),
}

async fn open(
    s: &AmqpSettings,
    url: &str,
    topo: &Topology,
    consumer_tag: &str,
) -> Result<Session, OpenError> {
    let mut uri = AMQPUri::from_str(url).map_err(|_| OpenError::BadUrl)?;
    // A half-open connection (the peer gone without a FIN) is only noticed
    // by missed heartbeats: ask for a short interval unless the URL sets one.
    if uri.query.heartbeat.is_none() {
        uri.query.heartbeat = Some(HEARTBEAT_SECS);
    }
    let tls = OwnedTLSConfig {
        identity: None,
        cert_chain: s.ca_pem.clone(),
    };
    let props =
        ConnectionProperties::default().with_connection_name(s.connection_name.clone().into());
    let runtime = lapin::runtime::default_runtime()?;
    let connection = tokio::time::timeout(
        OPEN_TIMEOUT,
        Connection::connect_uri_with_config(uri, props, tls, runtime),
    )
    .await
    .map_err(|_| OpenError::Timeout(OPEN_TIMEOUT, "connecting"))??;
    let setup = async {
        let publish = connection.create_channel().await?;
        topo.declare(&publish).await?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let consume = connection.create_channel().await?;
        consume
            .basic_qos(s.prefetch, BasicQosOptions::default())
            .await?;
        let consumer = consume
            .basic_consume(
                topo.jobs_queue().into(),
                consumer_tag.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        // Suspects one at a time: a crash while one runs blames only it.
        consume.basic_qos(1, BasicQosOptions::default()).await?;
        let suspects = consume
            .basic_consume(
                topo.suspect_queue().into(),
                format!("{consumer_tag}.suspects").into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok::<_, lapin::Error>((publish, consume, consumer, suspects))
    };
    let failed = match tokio::time::timeout(OPEN_TIMEOUT, setup).await {
        Ok(Ok((publish, consume, consumer, suspects))) => {
            return Ok(Session {
                connection,
                publish,
                consume,
                consumer,
                suspects,
            })
        }
        Ok(Err(e)) => OpenError::Amqp(e),
        Err(_) => OpenError::Timeout(OPEN_TIMEOUT, "declaring the topology and consuming"),
    };
    // Close what was opened so that a consumer the broker registered cannot
    // sit on prefetched jobs; bounded, since the broker may be the problem.
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        connection.close(320, "setup failed".into()),
    )
    .await;
    Err(failed)
}

/// Connects, retrying with exponential back-off until it works or shutdown
/// is requested (`None`). Each round tries every broker of the setting once,
/// starting with the one that worked last.
pub async fn connect(
    s: &AmqpSettings,
    topo: &Topology,
    consumer_tag: &str,
    shutdown: &Shutdown,
) -> Option<Session> {
    let setting = s.url.expose();
    let mut urls = broker_urls(setting);
    if urls.is_empty() {
        error!("the AMQP URL setting names no broker; trying it as it is");
        urls.push(setting);
    }
    let mut delay = Duration::from_millis(200);
    loop {
        let first = LAST_GOOD.load(Ordering::Relaxed);
        for i in rotation(first, urls.len()) {
            if shutdown.is_requested() {
                return None;
            }
            let target = redacted_one(urls[i]);
            let attempt = tokio::select! {
                _ = shutdown.wait() => return None,
                r = open(s, urls[i], topo, consumer_tag) => r,
            };
            match attempt {
                Ok(session) => {
                    LAST_GOOD.store(i, Ordering::Relaxed);
                    info!(broker = %target, queue = %topo.jobs_queue(), prefetch = s.prefetch, "connected and consuming");
                    return Some(session);
                }
                Err(e) => {
                    warn!(broker = %target, error = %e, brokers = urls.len(), "broker connection failed");
                }
            }
        }
        warn!(
            retry_in_ms = delay.as_millis() as u64,
            "no broker accepted the connection; backing off"
        );
        tokio::select! {
            _ = shutdown.wait() => return None,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(s.max_backoff);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_appear() {
        let r = redacted("amqps://user:s3cret@broker.example:5671/prod");
        assert_eq!(r, "amqps://broker.example:5671/prod");
        assert!(!redacted("amqp://guest:guest@127.0.0.1:5672/%2f").contains("guest"));
        assert!(!redacted("amqp://u:p@@@").contains("u:p"));
    }

    #[test]
    fn a_list_is_split_on_commas_and_trimmed() {
        assert_eq!(
            broker_urls(" amqp://a:5672/%2f , amqp://b:5673/%2f,,amqp://c/%2f ,"),
            ["amqp://a:5672/%2f", "amqp://b:5673/%2f", "amqp://c/%2f"]
        );
        assert_eq!(broker_urls("amqp://only/%2f"), ["amqp://only/%2f"]);
        assert!(broker_urls(" , ").is_empty());
    }

    #[test]
    fn a_list_is_checked_without_echoing_it() {
        assert_eq!(check_broker_urls("amqp://a/%2f,amqps://b:5671/x"), Ok(2));
        assert_eq!(check_broker_urls(" ,"), Err(UrlListError::Empty));
        let e = check_broker_urls("amqp://a/%2f,amqp://u:s3cret@h:notaport/%2f").unwrap_err();
        assert_eq!(e, UrlListError::Unparsable { position: 2 });
        assert!(!e.to_string().contains("s3cret"));
    }

    #[test]
    fn every_url_of_a_list_is_redacted() {
        let r = redacted("amqp://u:pw1@n1:5681/%2f, amqps://v:pw2@n2:5671/prod");
        assert_eq!(r, "amqp://n1:5681/%2f,amqps://n2:5671/prod");
        assert!(!r.contains("pw"));
    }

    #[test]
    fn rotation_starts_at_the_last_good_broker_and_wraps() {
        assert_eq!(rotation(0, 3).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(rotation(2, 3).collect::<Vec<_>>(), [2, 0, 1]);
        // A stale position (the list got shorter) still visits each once.
        assert_eq!(rotation(7, 3).collect::<Vec<_>>(), [1, 2, 0]);
        assert_eq!(rotation(0, 1).collect::<Vec<_>>(), [0]);
        assert_eq!(rotation(5, 0).count(), 0);
    }
}
