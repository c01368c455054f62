//! A RabbitMQ test client: publishes jobs the way a client service would and
//! reads what the worker sends back.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};

use crate::services::AMQP_URL;

/// A message read back from a queue.
#[derive(Debug, Clone)]
pub struct Received {
    pub body: Vec<u8>,
    pub properties: BasicProperties,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    pub fn result(&self) -> vargpt_proto::JobResult {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not a JobResult ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header_str(&self, key: &str) -> Option<String> {
        match self.properties.headers().as_ref()?.inner().get(key)? {
            AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
            AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
            other => Some(format!("{other:?}")),
        }
    }
}

pub struct Broker {
    conn: Connection,
    ch: Channel,
    pub prefix: String,
}

impl Broker {
    /// Connects to the shared broker.
    pub async fn connect(prefix: &str) -> anyhow::Result<Self> {
        crate::services::ensure_rabbitmq()?;
        Self::connect_to(AMQP_URL, prefix).await
    }

    /// Connects over amqps://, trusting `ca_pem`.
    pub async fn connect_tls(url: &str, ca_pem: &str, prefix: &str) -> anyhow::Result<Self> {
        let tls = lapin::tcp::OwnedTLSConfig {
            identity: None,
            cert_chain: Some(ca_pem.to_string()),
        };
        let props = ConnectionProperties::default().with_connection_name("vargpt-it-client".into());
        let conn =
            Connection::connect_with_config(url, props, tls, lapin::runtime::default_runtime()?)
                .await
                .context("test client connecting over TLS")?;
        let ch = conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok(Broker {
            conn,
            ch,
            prefix: prefix.to_string(),
        })
    }

    pub async fn connect_to(url: &str, prefix: &str) -> anyhow::Result<Self> {
        let conn = Connection::connect(
            url,
            ConnectionProperties::default().with_connection_name("vargpt-it-client".into()),
        )
        .await
        .context("test client connecting to RabbitMQ")?;
        let ch = conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok(Broker {
            conn,
            ch,
            prefix: prefix.to_string(),
        })
    }

    pub fn jobs_queue(&self) -> String {
        format!("{}.jobs", self.prefix)
    }

    pub fn dead_queue(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    pub fn results_queue(&self) -> String {
        format!("{}.results", self.prefix)
    }

    /// A durable reply queue for this test.
    pub async fn reply_queue(&self, name: &str) -> anyhow::Result<String> {
        let q = format!("{}.{name}", self.prefix);
        let opts = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        self.ch
            .queue_declare(q.as_str().into(), opts, FieldTable::default())
            .await?;
        Ok(q)
    }

    /// Publishes one job body to the job queue and waits for the confirm.
    /// Fails if the queue does not exist yet (start the worker first).
    pub async fn publish_job(
        &self,
        body: &[u8],
        reply_to: Option<&str>,
        correlation_id: Option<&str>,
    ) -> anyhow::Result<()> {
        let mut props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2);
        if let Some(r) = reply_to {
            props = props.with_reply_to(ShortString::from(r));
        }
        if let Some(c) = correlation_id {
            props = props.with_correlation_id(ShortString::from(c));
        }
        self.publish_props(body, props).await
    }

    /// Publishes one message with exactly these properties to the job queue
    /// (hostile-client tests set any header or property).
    pub async fn publish_props(&self, body: &[u8], props: BasicProperties) -> anyhow::Result<()> {
        let opts = BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        };
        let confirm = self
            .ch
            .basic_publish("".into(), self.jobs_queue().into(), opts, body, props)
            .await?
            .await?;
        match confirm {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_)) => bail!("job queue {} does not exist", self.jobs_queue()),
            other => bail!("publish not confirmed: {other:?}"),
        }
    }

    /// Reads `n` messages from `queue` (acking them), waiting at most `timeout`.
    /// Returns what arrived, possibly fewer.
    pub async fn collect(
        &self,
        queue: &str,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<Received>> {
        let ch = self.conn.create_channel().await?;
        ch.basic_qos(64, BasicQosOptions::default()).await?;
        let tag = format!("collect-{}", crate::unique_prefix("c"));
        let mut consumer = ch
            .basic_consume(
                queue.into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, consumer.next()).await {
                Ok(Some(Ok(d))) => {
                    d.acker.ack(BasicAckOptions::default()).await?;
                    out.push(Received {
                        body: d.data,
                        properties: d.properties,
                    });
                }
                Ok(Some(Err(e))) => return Err(e.into()),
                Ok(None) | Err(_) => break,
            }
        }
        let _ = ch
            .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
            .await;
        let _ = ch.close(200, "done".into()).await;
        Ok(out)
    }

    /// Deletes an exchange (to break the topology under a running worker).
    pub async fn delete_exchange(&self, name: &str) -> anyhow::Result<()> {
        let ch = self.conn.create_channel().await?;
        ch.exchange_delete(name.into(), ExchangeDeleteOptions::default())
            .await?;
        let _ = ch.close(200, "done".into()).await;
        Ok(())
    }

    /// Messages ready in a queue.
    pub async fn queue_len(&self, queue: &str) -> anyhow::Result<u32> {
        let ch = self.conn.create_channel().await?;
        let opts = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let q = ch
            .queue_declare(queue.into(), opts, FieldTable::default())
            .await?;
        let _ = ch.close(200, "done".into()).await;
        Ok(q.message_count())
    }

    /// Deletes this test's queues and exchanges (best effort).
    pub async fn cleanup(&self, extra_queues: &[String]) {
        let Ok(ch) = self.conn.create_channel().await else {
            return;
        };
        let p = &self.prefix;
        let mut queues = vec![self.jobs_queue(), self.dead_queue(), self.results_queue()];
        queues.extend(
            list_queues()
                .into_iter()
                .filter(|q| q.starts_with(&format!("{p}."))),
        );
        queues.extend(extra_queues.iter().cloned());
        queues.sort();
        queues.dedup();
        for q in queues {
            let _ = ch
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        for x in [format!("{p}.results"), format!("{p}.dlx")] {
            let _ = ch
                .exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default())
                .await;
        }
        let _ = ch.close(200, "done".into()).await;
    }
}

/// Every queue name on the broker (via rabbitmqctl).
pub fn list_queues() -> Vec<String> {
    let out = Command::new("rabbitmqctl")
        .args(["list_queues", "-q", "--no-table-headers", "name"])
        .output();
    match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Force-closes the broker connections whose client-provided name contains
/// `needle` (what an admin or a network partition would do). Returns how
/// many were closed.
pub fn close_connections_named(needle: &str) -> anyhow::Result<usize> {
    let out = Command::new("rabbitmqctl")
        .args([
            "list_connections",
            "-q",
            "--no-table-headers",
            "pid",
            "client_properties",
        ])
        .output()
        .context("rabbitmqctl list_connections")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut closed = 0;
    for line in text.lines().filter(|l| l.contains(needle)) {
        // The first column is the connection's Erlang pid, which close_connection takes.
        let Some(pid) = line.split('\t').next() else {
            continue;
        };
        let status = Command::new("rabbitmqctl")
            .args([
                "close_connection",
                pid.trim(),
                "integration test: forced connection drop",
            ])
            .output()
            .context("rabbitmqctl close_connection")?;
        if status.status.success() {
            closed += 1;
        }
    }
    Ok(closed)
}
