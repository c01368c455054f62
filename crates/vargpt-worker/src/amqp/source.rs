//! Deliveries from the job queue as pipeline messages.

use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::Consumer;

use super::headers::meta_of;
use crate::pipeline::{Acker, Envelope, Incoming, JobSource, TransportError};

pub struct AmqpSource {
    consumer: Consumer,
}

impl AmqpSource {
    pub fn new(consumer: Consumer) -> Self {
        AmqpSource { consumer }
    }
}

#[async_trait]
impl JobSource for AmqpSource {
    async fn next(&mut self) -> Result<Option<Incoming>, TransportError> {
        match self.consumer.next().await {
            Some(Ok(d)) => {
                let meta = meta_of(&d.properties);
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
}

struct AmqpAcker(lapin::Acker);

#[async_trait]
impl Acker for AmqpAcker {
    async fn ack(&self) -> Result<(), TransportError> {
        match self.0.ack(BasicAckOptions::default()).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(TransportError::Disconnected(
                "channel closed before the ack".into(),
            )),
            Err(e) => Err(TransportError::Disconnected(e.to_string())),
        }
    }

    async fn requeue(&self) -> Result<(), TransportError> {
        match self
            .0
            .nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await
        {
            Ok(true) => Ok(()),
            Ok(false) => Err(TransportError::Disconnected(
                "channel closed before the nack".into(),
            )),
            Err(e) => Err(TransportError::Disconnected(e.to_string())),
        }
    }
}
