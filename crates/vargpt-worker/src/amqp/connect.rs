//! Connecting to the broker (amqp:// or amqps://), with back-off, without
//! ever logging the URL's credentials.

use std::str::FromStr;
use std::time::Duration;

use lapin::options::{BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::tcp::OwnedTLSConfig;
use lapin::types::FieldTable;
use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, ConnectionProperties, Consumer};
use tracing::{info, warn};

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

/// The URL without user and password, for logs.
pub fn redacted(url: &str) -> String {
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
    pub consumer: Consumer,
}

async fn open(s: &AmqpSettings, topo: &Topology, consumer_tag: &str) -> lapin::Result<Session> {
    let tls = OwnedTLSConfig {
        identity: None,
        cert_chain: s.ca_pem.clone(),
    };
    let props =
        ConnectionProperties::default().with_connection_name(s.connection_name.clone().into());
    let runtime = lapin::runtime::default_runtime()?;
    let connection = Connection::connect_with_config(s.url.expose(), props, tls, runtime).await?;
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
    Ok(Session {
        connection,
        publish,
        consume,
        consumer,
    })
}

/// Connects, retrying with exponential back-off until it works or shutdown
/// is requested (`None`).
pub async fn connect(
    s: &AmqpSettings,
    topo: &Topology,
    consumer_tag: &str,
    shutdown: &Shutdown,
) -> Option<Session> {
    let target = redacted(s.url.expose());
    let mut delay = Duration::from_millis(200);
    loop {
        if shutdown.is_requested() {
            return None;
        }
        match open(s, topo, consumer_tag).await {
            Ok(session) => {
                info!(broker = %target, queue = %topo.jobs_queue(), prefetch = s.prefetch, "connected and consuming");
                return Some(session);
            }
            Err(e) => {
                warn!(broker = %target, error = %e, retry_in_ms = delay.as_millis() as u64, "broker connection failed");
            }
        }
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
}
