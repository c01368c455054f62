//! Deliveries from the job queue and the suspect queue as pipeline messages.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::Consumer;
use tokio::sync::Notify;

use super::headers::meta_of;
use crate::pipeline::{Acker, Envelope, Incoming, JobSource, TransportError};

/// Longest wait for an ack or nack to be handed to the connection; past it
/// the broker is treated as lost (it redelivers what was not settled).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

pub struct AmqpSource {
    jobs: Consumer,
    suspects: Consumer,
    /// Notified by the sink when the broker stopped answering.
    lost: Arc<Notify>,
}

impl AmqpSource {
    pub fn new(jobs: Consumer, suspects: Consumer, lost: Arc<Notify>) -> Self {
        AmqpSource {
            jobs,
            suspects,
            lost,
        }
    }
}

fn incoming(
    d: Option<lapin::Result<lapin::message::Delivery>>,
    isolated: bool,
) -> Result<Option<Incoming>, TransportError> {
    match d {
        Some(Ok(d)) => {
            let mut meta = meta_of(&d.properties);
            meta.isolated = isolated;
            let props = Arc::new(d.properties.clone());
            Ok(Some(Incoming {
                envelope: Envelope::new(d.data, meta, Some(props)),
                acker: Box::new(AmqpAcker(d.acker)),
            }))
        }
        Some(Err(e)) => Err(TransportError::Disconnected(e.to_string())),
        // The broker cancelled the consumer (queue deleted, channel closed):
        // for a worker that is as good as a lost connection.
        None => Err(TransportError::Disconnected("consumer cancelled".into())),
    }
}

#[async_trait]
impl JobSource for AmqpSource {
    async fn next(&mut self) -> Result<Option<Incoming>, TransportError> {
        // Both arms are cancel-safe (`Stream::next`); suspects first, since
        // each one holds a prefetch slot of its own until it runs.
        tokio::select! {
            biased;
            _ = self.lost.notified() => Err(TransportError::Disconnected(
                "the broker stopped answering (a publish confirm timed out)".into(),
            )),
            d = self.suspects.next() => incoming(d, true),
            d = self.jobs.next() => incoming(d, false),
        }
    }
}

struct AmqpAcker(lapin::Acker);

async fn bounded(
    what: &str,
    settle: impl std::future::Future<Output = lapin::Result<bool>>,
) -> Result<(), TransportError> {
    match tokio::time::timeout(SETTLE_TIMEOUT, settle).await {
        Ok(Ok(true)) => Ok(()),
        Ok(Ok(false)) => Err(TransportError::Disconnected(format!(
            "channel closed before the {what}"
        ))),
        Ok(Err(e)) => Err(TransportError::Disconnected(e.to_string())),
        Err(_) => Err(TransportError::Disconnected(format!(
            "the {what} was not sent within {} s",
            SETTLE_TIMEOUT.as_secs()
        ))),
    }
}

#[async_trait]
impl Acker for AmqpAcker {
    async fn ack(&self) -> Result<(), TransportError> {
        bounded("ack", self.0.ack(BasicAckOptions::default())).await
    }

    async fn requeue(&self) -> Result<(), TransportError> {
        let opts = BasicNackOptions {
            requeue: true,
            ..Default::default()
        };
        bounded("nack", self.0.nack(opts)).await
    }
}
