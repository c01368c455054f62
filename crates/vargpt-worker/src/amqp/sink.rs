//! Results, dead letters and retries, each published with a publisher
//! confirm before the caller goes on to ack.
//!
//! Publishing has its own channel, separate from the consumer's, and reopens
//! it on its own: a publish the broker refuses with a channel error (a
//! hostile reply-to, say) costs one channel, never the connection or the
//! deliveries in flight on the consumer. Every confirm has a time bound, and
//! a broker that stops confirming is reported to readiness as stalled.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use tokio::sync::{Mutex, Notify};
use tracing::warn;
use vargpt_proto::{ErrorInfo, JobResult, CONTENT_TYPE};

use super::headers::{self, now_ms};
use super::topology::{Topology, DEAD_ROUTING_KEY};
use crate::health::Readiness;
use crate::pipeline::{Envelope, ResultSink, Route, TransportError};

/// Delivery mode 2: the broker writes the message to disk.
const PERSISTENT: u8 = 2;
/// Tries of one publish that the broker nacked or that lost its channel.
const PUBLISH_TRIES: u32 = 3;
/// Pause before the second try; doubled for each later one.
const FIRST_PAUSE: Duration = Duration::from_millis(100);

pub struct AmqpSink {
    connection: Arc<Connection>,
    /// The publishing channel (confirm mode), opened on first use and again
    /// whenever the broker closed it, with the topology declared.
    channel: Mutex<Option<Channel>>,
    topology: Arc<Topology>,
    worker_id: String,
    confirm_timeout: Duration,
    readiness: Arc<Readiness>,
    /// Told when the broker stopped answering: the session is then given up
    /// (the source reports the loss) and the worker reconnects, maybe to
    /// another node, instead of waiting on a half-open socket.
    lost: Arc<Notify>,
}

/// What the broker did with one publish.
enum Outcome {
    Stored,
    /// `mandatory` and no queue took it.
    Unroutable,
}

impl AmqpSink {
    pub fn new(
        connection: Arc<Connection>,
        topology: Arc<Topology>,
        worker_id: String,
        confirm_timeout: Duration,
        readiness: Arc<Readiness>,
        lost: Arc<Notify>,
    ) -> Self {
        AmqpSink {
            connection,
            channel: Mutex::new(None),
            topology,
            worker_id,
            confirm_timeout,
            readiness,
            lost,
        }
    }

    /// The open publishing channel, reopened if the broker closed it.
    async fn channel(&self) -> Result<Channel, TransportError> {
        let mut slot = self.channel.lock().await;
        if let Some(ch) = slot.as_ref().filter(|c| c.status().connected()) {
            return Ok(ch.clone());
        }
        if !self.connection.status().connected() {
            return Err(TransportError::Disconnected("connection closed".into()));
        }
        let open = async {
            let ch = self.connection.create_channel().await?;
            // The broker closes a channel that publishes to a missing
            // exchange: declaring the (idempotent) topology on every new
            // channel puts back what an operator deleted.
            self.topology.declare(&ch).await?;
            ch.confirm_select(ConfirmSelectOptions::default()).await?;
            Ok::<_, lapin::Error>(ch)
        };
        let ch = match tokio::time::timeout(self.confirm_timeout, open).await {
            Ok(Ok(ch)) => ch,
            Ok(Err(e)) => return Err(TransportError::Disconnected(e.to_string())),
            Err(_) => return Err(self.stalled("opening a channel")),
        };
        *slot = Some(ch.clone());
        Ok(ch)
    }

    fn stalled(&self, what: &str) -> TransportError {
        let why = format!(
            "broker stalled: {what} got no answer within {} s",
            self.confirm_timeout.as_secs_f64()
        );
        self.readiness.set_broker_stalled(Some(why.clone()));
        self.lost.notify_one();
        TransportError::Disconnected(why)
    }

    /// One publish and its confirm, within the confirm timeout.
    async fn publish_once(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<Outcome, TransportError> {
        let channel = self.channel().await?;
        let opts = BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        };
        let confirm = async {
            channel
                .basic_publish(exchange.into(), routing_key.into(), opts, body, props)
                .await?
                .await
        };
        let confirm = match tokio::time::timeout(self.confirm_timeout, confirm).await {
            Err(_) => {
                // Its confirm may never come: publish on a fresh channel next.
                let _ = channel.close(200, "confirm timed out".into()).await;
                return Err(self.stalled("a publish"));
            }
            Ok(Err(e)) => return Err(TransportError::Disconnected(e.to_string())),
            Ok(Ok(c)) => c,
        };
        self.readiness.set_broker_stalled(None);
        match confirm {
            Confirmation::Ack(None) => Ok(Outcome::Stored),
            Confirmation::Ack(Some(_)) => Ok(Outcome::Unroutable),
            Confirmation::Nack(_) => Err(TransportError::NotConfirmed(format!(
                "broker nacked the publish to {exchange:?}/{routing_key:?}"
            ))),
            Confirmation::NotRequested => Err(TransportError::NotConfirmed(
                "channel is not in confirm mode".into(),
            )),
        }
    }

    /// [`Self::publish_once`] with a few tries for nacks and lost channels,
    /// as long as the connection lives; a bounded number, never a loop.
    async fn publish_confirmed(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<Outcome, TransportError> {
        let mut pause = FIRST_PAUSE;
        let mut tries = 0;
        loop {
            tries += 1;
            match self
                .publish_once(exchange, routing_key, body, props.clone())
                .await
            {
                Ok(o) => return Ok(o),
                Err(e) if tries >= PUBLISH_TRIES || !self.connection.status().connected() => {
                    return Err(e)
                }
                Err(e) => {
                    warn!(error = %e, tries, "publish failed; trying again");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
            }
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

    /// Publishes a copy of the job's message; a copy no queue took is a
    /// failure (`missing` says which queue is missing).
    async fn publish_copy(
        &self,
        exchange: &str,
        routing_key: &str,
        env: &Envelope,
        props: BasicProperties,
        missing: impl FnOnce() -> String,
    ) -> Result<(), TransportError> {
        match self
            .publish_confirmed(exchange, routing_key, &env.body, props)
            .await?
        {
            Outcome::Stored => Ok(()),
            Outcome::Unroutable => Err(TransportError::NotConfirmed(missing())),
        }
    }

    /// Publishes to the results exchange; anything but "stored" means the
    /// result cannot be delivered.
    async fn publish_to_results(
        &self,
        result: &JobResult,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<(), TransportError> {
        let key = vargpt_proto::wire::result_routing_key(
            crate::pipeline::kind_label(result.kind),
            result.status.as_str(),
        );
        match self
            .publish_confirmed(&self.topology.results_exchange(), &key, body, props)
            .await
        {
            Ok(Outcome::Stored) => Ok(()),
            Ok(Outcome::Unroutable) => Err(TransportError::Undeliverable(
                "the results exchange has no bound queue".into(),
            )),
            Err(TransportError::NotConfirmed(m)) => Err(TransportError::Undeliverable(m)),
            Err(e) => Err(e),
        }
    }
}

/// Direct reply-to addresses are not answered: a forged one
/// (`amq.rabbitmq.reply-to.<junk>`) makes RabbitMQ 3.10's channel crash and
/// close the publisher's whole connection with INTERNAL_ERROR, so any client
/// could cut the worker off its broker (found by the hostile-client suite).
/// Such results go to the results exchange instead. (Server-named queues,
/// `amq.gen-*`, are ordinary queues and are answered.)
fn is_reserved(reply_to: &str) -> bool {
    reply_to.starts_with("amq.rabbitmq.reply-to")
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
        if let Some(q) = route.reply_to.as_ref().filter(|q| !is_reserved(q)) {
            match self.publish_confirmed("", q, &body, props.clone()).await {
                Ok(Outcome::Stored) => return Ok(()),
                // The reply queue is gone or refused it: the result must not
                // be lost with it, nor the job run again for it.
                Ok(Outcome::Unroutable) => {
                    warn!(reply_to = %q, "reply queue does not exist; publishing to the results exchange")
                }
                Err(e) if self.connection.status().connected() => {
                    warn!(reply_to = %q, error = %e, "reply queue refused the result; publishing to the results exchange")
                }
                Err(e) => return Err(e),
            }
        }
        if let Some(q) = route.reply_to.as_ref().filter(|q| is_reserved(q)) {
            warn!(reply_to = %q, "reply-to is a direct reply-to address, which the worker does not answer; publishing to the results exchange");
        }
        self.publish_to_results(result, &body, props).await
    }

    async fn dead_letter(&self, env: &Envelope, error: &ErrorInfo) -> Result<(), TransportError> {
        let props = Self::original_props(env);
        let h = headers::republished(props.headers().as_ref(), &[], |h| {
            headers::set_str(h, headers::ERROR_CODE, error.code.as_str());
            headers::set_str(h, headers::ERROR_MESSAGE, &error.message);
            headers::set_str(h, headers::WORKER_ID, &self.worker_id);
            headers::set_u64(h, headers::ATTEMPT, u64::from(env.meta.attempt));
            headers::set_u64(h, headers::FAILED_AT_MS, now_ms());
        });
        let dlx = self.topology.dead_letter_exchange();
        self.publish_copy(&dlx, DEAD_ROUTING_KEY, env, props.with_headers(h), || {
            "dead-letter queue is not bound".into()
        })
        .await
    }

    async fn retry(&self, env: &Envelope, attempt: u32) -> Result<(), TransportError> {
        let queue = self
            .topology
            .retry_queue(attempt)
            .ok_or_else(|| TransportError::Other("no retry queue configured".into()))?;
        let props = Self::original_props(env);
        let first_seen = env
            .meta
            .enqueued_at
            .unwrap_or(env.meta.received_at_wall)
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        // A copy is a new message: the broker's delivery count restarts.
        let h = headers::republished(
            props.headers().as_ref(),
            &[
                headers::DELIVERY_COUNT,
                headers::ACQUIRED_COUNT,
                headers::LEGACY_ENQUEUED_AT_MS,
            ],
            |h| {
                headers::set_u64(h, headers::ATTEMPT, u64::from(attempt));
                if !h.contains_key(headers::ENQUEUED_AT_MS) {
                    headers::set_u64(h, headers::ENQUEUED_AT_MS, first_seen);
                }
            },
        );
        self.publish_copy("", &queue, env, props.with_headers(h), || {
            format!("retry queue {queue} does not exist")
        })
        .await
    }

    async fn quarantine(&self, env: &Envelope) -> Result<(), TransportError> {
        let props = Self::original_props(env);
        // A copy starts a fresh delivery count: in the suspect queue it
        // counts only the crashes that happen while this job runs alone.
        let h = headers::republished(
            props.headers().as_ref(),
            &[headers::DELIVERY_COUNT, headers::ACQUIRED_COUNT],
            |_| {},
        );
        let queue = self.topology.suspect_queue();
        self.publish_copy("", &queue, env, props.with_headers(h), || {
            format!("suspect queue {queue} does not exist")
        })
        .await
    }
}
