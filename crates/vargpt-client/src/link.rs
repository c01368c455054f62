//! One connection to the broker: a publishing channel in confirm mode and
//! the consumer of the reply queue. A [`crate::Client`] opens a new link
//! when the connection is lost.

use lapin::options::{
    BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, Consumer};
use tokio::task::JoinHandle;

use crate::config::{ClientConfig, ReplyQueue};
use crate::error::{redact_url, Error, Result};

pub(crate) struct Link {
    pub(crate) connection: Connection,
    /// In confirm mode; replaced when a channel-level error closed it.
    pub(crate) publish: Channel,
    /// The queue results come back on (server-named for a private queue, so
    /// it changes with every link).
    pub(crate) reply_queue: String,
    /// Consumes the reply queue; set once the link is in place.
    pub(crate) reply_task: Option<JoinHandle<()>>,
    /// Counts the links of one client, so that a failure seen on an old link
    /// does not tear down a newer one.
    pub(crate) generation: u64,
    /// Its reply consumer stopped: a new link is needed.
    pub(crate) broken: bool,
}

impl Link {
    /// Whether the link can still publish and receive results.
    pub(crate) fn connected(&self) -> bool {
        !self.broken && self.connection.status().connected()
    }

    /// The publishing channel, replaced by a fresh one if it was closed (a
    /// channel error does not close the connection).
    pub(crate) async fn publish_channel(&mut self) -> Result<Channel> {
        if !self.publish.status().connected() {
            self.publish = confirm_channel(&self.connection).await?;
        }
        Ok(self.publish.clone())
    }

    /// Stops consuming; the connection closes when dropped.
    pub(crate) fn stop(&mut self) {
        if let Some(task) = self.reply_task.take() {
            task.abort();
        }
    }
}

/// Connects, opens the publishing channel and starts consuming the reply
/// queue. The consumer is returned for the caller to drive.
pub(crate) async fn open(
    amqp_url: &str,
    config: &ClientConfig,
    consumer_tag: String,
    generation: u64,
) -> Result<(Link, Consumer)> {
    let props =
        ConnectionProperties::default().with_connection_name(config.connection_name.clone().into());
    let connection = Connection::connect(amqp_url, props)
        .await
        .map_err(|source| Error::Connect {
            url: redact_url(amqp_url),
            source,
        })?;
    let publish = confirm_channel(&connection).await?;
    let replies = connection.create_channel().await?;
    replies
        .basic_qos(config.reply_prefetch.max(1), BasicQosOptions::default())
        .await?;
    let reply_queue = declare_reply_queue(&replies, &config.reply_queue).await?;
    let consumer = replies
        .basic_consume(
            crate::wire::short("", "reply queue", &reply_queue)?,
            consumer_tag.into(),
            BasicConsumeOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let link = Link {
        connection,
        publish,
        reply_queue,
        reply_task: None,
        generation,
        broken: false,
    };
    Ok((link, consumer))
}

async fn confirm_channel(connection: &Connection) -> Result<Channel> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// Declares (or, for [`ReplyQueue::Existing`], checks) the reply queue and
/// returns its name.
async fn declare_reply_queue(channel: &Channel, reply: &ReplyQueue) -> Result<String> {
    let (name, options) = match reply {
        ReplyQueue::Private => (
            "",
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
        ),
        ReplyQueue::Durable(name) => (
            name.as_str(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
        ),
        ReplyQueue::Existing(name) => (
            name.as_str(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
        ),
    };
    if !matches!(reply, ReplyQueue::Private) && name.is_empty() {
        return Err(Error::InvalidConfig(
            "a durable or existing reply queue needs a name".into(),
        ));
    }
    let queue = channel
        .queue_declare(
            crate::wire::short("", "reply queue", name)?,
            options,
            FieldTable::default(),
        )
        .await
        .map_err(|source| Error::ReplyQueue {
            queue: name.to_string(),
            source,
        })?;
    Ok(queue.name().to_string())
}
