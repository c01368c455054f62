//! Results, dead letters and retries, each published with a publisher
//! confirm before the caller goes on to ack.

use std::sync::Arc;

use async_trait::async_trait;
use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Confirmation};
use tracing::warn;
use vargpt_proto::{ErrorInfo, JobResult, CONTENT_TYPE};

use super::headers::{self, now_ms};
use super::topology::{Topology, DEAD_ROUTING_KEY};
use crate::pipeline::{Envelope, ResultSink, Route, TransportError};

/// Delivery mode 2: the broker writes the message to disk.
const PERSISTENT: u8 = 2;

pub struct AmqpSink {
    channel: Channel,
    /// The consuming channel: closed when publishing becomes impossible, so
    /// the consume loop sees the loss and reconnects (re-declaring the
    /// topology) instead of redelivering jobs whose results cannot go out.
    consume: Channel,
    topology: Arc<Topology>,
    worker_id: String,
}

enum Outcome {
    Stored,
    Unroutable,
}

impl AmqpSink {
    /// `channel` must be in confirm mode.
    pub fn new(
        channel: Channel,
        consume: Channel,
        topology: Arc<Topology>,
        worker_id: String,
    ) -> Self {
        AmqpSink {
            channel,
            consume,
            topology,
            worker_id,
        }
    }

    async fn lost(&self, e: lapin::Error) -> TransportError {
        if !self.channel.status().connected() && self.consume.status().connected() {
            warn!(error = %e, "publish channel closed; closing the consumer too, to reconnect");
            let _ = self.consume.close(320, "publish channel lost".into()).await;
        }
        TransportError::Disconnected(e.to_string())
    }

    async fn publish_confirmed(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<Outcome, TransportError> {
        let opts = BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        };
        let published = self
            .channel
            .basic_publish(exchange.into(), routing_key.into(), opts, body, props)
            .await;
        let confirm = match published {
            Ok(pending) => pending.await,
            Err(e) => Err(e),
        };
        let confirm = match confirm {
            Ok(c) => c,
            Err(e) => return Err(self.lost(e).await),
        };
        match confirm {
            Confirmation::Ack(None) => Ok(Outcome::Stored),
            Confirmation::Ack(Some(_)) => Ok(Outcome::Unroutable),
            Confirmation::Nack(_) => Err(TransportError::NotConfirmed(format!(
                "broker nacked publish to {exchange:?}/{routing_key}"
            ))),
            Confirmation::NotRequested => Err(TransportError::NotConfirmed(
                "channel is not in confirm mode".into(),
            )),
        }
    }

    /// The original message's properties, or a fresh set if it had none.
    fn original_props(env: &Envelope) -> BasicProperties {
        env.transport
            .as_ref()
            .and_then(|t| t.downcast_ref::<BasicProperties>())
            .cloned()
            .unwrap_or_else(|| BasicProperties::default().with_content_type(CONTENT_TYPE.into()))
            .with_delivery_mode(PERSISTENT)
    }
}

#[async_trait]
impl ResultSink for AmqpSink {
    async fn publish(&self, result: &JobResult, route: &Route) -> Result<(), TransportError> {
        let body = result.to_json();
        let mut h = lapin::types::FieldTable::default();
        headers::set_str(&mut h, headers::JOB_ID, &result.job_id);
        headers::set_str(&mut h, headers::STATUS, result.status.as_str());
        let mut props = BasicProperties::default()
            .with_content_type(CONTENT_TYPE.into())
            .with_delivery_mode(PERSISTENT)
            .with_timestamp(now_ms() / 1000)
            .with_headers(h);
        if let Some(c) = &route.correlation_id {
            props = props.with_correlation_id(ShortString::from(c.as_str()));
        }
        if let Some(q) = &route.reply_to {
            match self.publish_confirmed("", q, &body, props.clone()).await? {
                Outcome::Stored => return Ok(()),
                // The reply queue is gone: the result must not be lost with it.
                Outcome::Unroutable => {
                    warn!(reply_to = %q, "reply queue does not exist; publishing to the results exchange")
                }
            }
        }
        let key = format!(
            "{}.{}",
            crate::pipeline::kind_label(result.kind),
            result.status.as_str()
        );
        match self
            .publish_confirmed(&self.topology.results_exchange(), &key, &body, props)
            .await?
        {
            Outcome::Stored => Ok(()),
            Outcome::Unroutable => Err(TransportError::NotConfirmed(
                "results exchange has no bound queue".into(),
            )),
        }
    }

    async fn dead_letter(&self, env: &Envelope, error: &ErrorInfo) -> Result<(), TransportError> {
        let props = Self::original_props(env);
        let mut h = headers::without(props.headers().as_ref(), &[]);
        headers::set_str(&mut h, headers::ERROR_CODE, error.code.as_str());
        headers::set_str(&mut h, headers::ERROR_MESSAGE, &error.message);
        headers::set_str(&mut h, headers::WORKER_ID, &self.worker_id);
        headers::set_u64(&mut h, headers::ATTEMPT, u64::from(env.meta.attempt));
        headers::set_u64(&mut h, headers::FAILED_AT_MS, now_ms());
        let dlx = self.topology.dead_letter_exchange();
        match self
            .publish_confirmed(&dlx, DEAD_ROUTING_KEY, &env.body, props.with_headers(h))
            .await?
        {
            Outcome::Stored => Ok(()),
            Outcome::Unroutable => Err(TransportError::NotConfirmed(
                "dead-letter queue is not bound".into(),
            )),
        }
    }

    async fn retry(&self, env: &Envelope, attempt: u32) -> Result<(), TransportError> {
        let queue = self
            .topology
            .retry_queue(attempt)
            .ok_or_else(|| TransportError::Other("no retry queue configured".into()))?;
        let props = Self::original_props(env);
        // A copy is a new message: the broker's delivery count restarts.
        let mut h = headers::without(
            props.headers().as_ref(),
            &[headers::DELIVERY_COUNT, headers::ACQUIRED_COUNT],
        );
        headers::set_u64(&mut h, headers::ATTEMPT, u64::from(attempt));
        if !h.contains_key(headers::ENQUEUED_AT_MS) {
            let first_seen = env
                .meta
                .enqueued_at
                .unwrap_or(env.meta.received_at_wall)
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            headers::set_u64(&mut h, headers::ENQUEUED_AT_MS, first_seen);
        }
        match self
            .publish_confirmed("", &queue, &env.body, props.with_headers(h))
            .await?
        {
            Outcome::Stored => Ok(()),
            Outcome::Unroutable => Err(TransportError::NotConfirmed(format!(
                "retry queue {queue} does not exist"
            ))),
        }
    }
}
