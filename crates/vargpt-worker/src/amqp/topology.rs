//! Queues and exchanges, declared idempotently by every worker at connect.
//!
//! ```text
//! client ──► (default exchange) ──► {p}.jobs   quorum, x-delivery-limit,
//!                                     │          DLX {p}.dlx / "dead"
//!                 worker ─────────────┤
//!   result ──► reply_to queue, or ──► {p}.results (topic, key "{kind}.{status}") ──► {p}.results queue ("#")
//!   bad job ──► {p}.dlx (direct) ── "dead" ──► {p}.dead          (annotated copy)
//!   transient ─► {p}.jobs.retry.{ms}ms.quorum  (TTL; dead-letters back to
//!                {p}.jobs, at least once)
//!   suspect ──► {p}.jobs.suspect  (a job that was in flight when a worker
//!               died: run alone, so a crash there blames only it; after
//!               x-delivery-limit deliveries the worker answers
//!               worker_crashed, and the broker itself dead-letters one
//!               delivery later)
//! ```
//!
//! Every queue is a quorum queue (replicated on a cluster); the ones whose
//! messages the broker moves on its own (retry TTLs, the delivery limit)
//! dead-letter at least once, so a broker node dying mid-move loses nothing.
//!
//! Queue arguments are part of a queue's identity: declaring an existing
//! queue with other arguments fails. Retry queues therefore carry their
//! delay in their name, so changing the back-off creates new queues.

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};
use vargpt_proto::wire::Names;

pub use vargpt_proto::wire::DEAD_ROUTING_KEY;

#[derive(Debug, Clone)]
pub struct Topology {
    pub prefix: String,
    /// The broker-side `x-delivery-limit` of the job queue.
    pub delivery_limit: u32,
    /// Back-off before attempt 2, 3, …; its length + 1 is the attempt limit.
    pub retry_delays: Vec<Duration>,
}

/// One declaration, kept as data so the layout can be tested without a broker.
#[derive(Debug, Clone, PartialEq)]
pub enum Decl {
    Exchange {
        name: String,
        kind: &'static str,
    },
    Queue {
        name: String,
        args: Vec<(&'static str, Arg)>,
    },
    Bind {
        queue: String,
        exchange: String,
        key: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    Str(String),
    Int(i64),
}

impl Topology {
    fn names(&self) -> Names {
        Names::new(self.prefix.as_str())
    }

    pub fn jobs_queue(&self) -> String {
        self.names().jobs_queue()
    }

    pub fn suspect_queue(&self) -> String {
        self.names().suspect_queue()
    }

    pub fn results_exchange(&self) -> String {
        self.names().results_exchange()
    }

    pub fn results_queue(&self) -> String {
        self.names().results_queue()
    }

    pub fn dead_letter_exchange(&self) -> String {
        self.names().dead_letter_exchange()
    }

    pub fn dead_queue(&self) -> String {
        self.names().dead_queue()
    }

    /// Attempts for transient failures, the first included.
    pub fn max_attempts(&self) -> u32 {
        self.retry_delays.len() as u32 + 1
    }

    fn retry_queue_for_delay(&self, d: Duration) -> String {
        self.names().retry_queue(d.as_millis())
    }

    /// The queue that holds a job before `attempt` (2, 3, …).
    pub fn retry_queue(&self, attempt: u32) -> Option<String> {
        let i = (attempt.max(2) - 2) as usize;
        let d = self
            .retry_delays
            .get(i.min(self.retry_delays.len().checked_sub(1)?))?;
        Some(self.retry_queue_for_delay(*d))
    }

    pub fn declarations(&self) -> Vec<Decl> {
        let jobs = self.jobs_queue();
        let dlx = self.dead_letter_exchange();
        let s = |v: &str| Arg::Str(v.to_string());
        let mut out = vec![
            Decl::Exchange {
                name: dlx.clone(),
                kind: "direct",
            },
            Decl::Queue {
                name: self.dead_queue(),
                args: vec![("x-queue-type", s("quorum"))],
            },
            Decl::Bind {
                queue: self.dead_queue(),
                exchange: dlx.clone(),
                key: DEAD_ROUTING_KEY.into(),
            },
            Decl::Queue {
                name: jobs.clone(),
                args: vec![
                    ("x-queue-type", s("quorum")),
                    ("x-delivery-limit", Arg::Int(i64::from(self.delivery_limit))),
                    ("x-dead-letter-exchange", s(&dlx)),
                    ("x-dead-letter-routing-key", s(DEAD_ROUTING_KEY)),
                ],
            },
            Decl::Queue {
                name: self.suspect_queue(),
                args: vec![
                    ("x-queue-type", s("quorum")),
                    // One more than the worker's own limit: the worker
                    // answers worker_crashed first; this is the backstop.
                    (
                        "x-delivery-limit",
                        Arg::Int(i64::from(self.delivery_limit) + 1),
                    ),
                    ("x-dead-letter-exchange", s(&dlx)),
                    ("x-dead-letter-routing-key", s(DEAD_ROUTING_KEY)),
                    ("x-dead-letter-strategy", s("at-least-once")),
                    ("x-overflow", s("reject-publish")),
                ],
            },
            Decl::Exchange {
                name: self.results_exchange(),
                kind: "topic",
            },
            Decl::Queue {
                name: self.results_queue(),
                args: vec![("x-queue-type", s("quorum"))],
            },
            Decl::Bind {
                queue: self.results_queue(),
                exchange: self.results_exchange(),
                key: "#".into(),
            },
        ];
        let mut delays = self.retry_delays.clone();
        delays.dedup();
        for d in delays {
            // After the ack of the original the retry copy is the only one:
            // quorum (message TTL needs RabbitMQ 3.10+) and at-least-once
            // dead-lettering back to the jobs queue, so no node loss drops it.
            out.push(Decl::Queue {
                name: self.retry_queue_for_delay(d),
                args: vec![
                    ("x-queue-type", s("quorum")),
                    ("x-message-ttl", Arg::Int(d.as_millis() as i64)),
                    ("x-dead-letter-exchange", s("")),
                    ("x-dead-letter-routing-key", s(&jobs)),
                    ("x-dead-letter-strategy", s("at-least-once")),
                    ("x-overflow", s("reject-publish")),
                ],
            });
        }
        out
    }

    /// Declares everything (durable). Idempotent while the arguments match.
    pub async fn declare(&self, ch: &Channel) -> lapin::Result<()> {
        for d in self.declarations() {
            match d {
                Decl::Exchange { name, kind } => {
                    let kind = if kind == "topic" {
                        ExchangeKind::Topic
                    } else {
                        ExchangeKind::Direct
                    };
                    let opts = ExchangeDeclareOptions {
                        durable: true,
                        ..Default::default()
                    };
                    ch.exchange_declare(name.into(), kind, opts, FieldTable::default())
                        .await?;
                }
                Decl::Queue { name, args } => {
                    let opts = QueueDeclareOptions {
                        durable: true,
                        ..Default::default()
                    };
                    ch.queue_declare(name.into(), opts, field_table(&args))
                        .await?;
                }
                Decl::Bind {
                    queue,
                    exchange,
                    key,
                } => {
                    ch.queue_bind(
                        queue.into(),
                        exchange.into(),
                        key.into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
                }
            }
        }
        Ok(())
    }
}

fn field_table(args: &[(&'static str, Arg)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in args {
        let v = match v {
            Arg::Str(s) => AMQPValue::LongString(LongString::from(s.as_str())),
            Arg::Int(i) => AMQPValue::LongLongInt(*i),
        };
        t.insert(ShortString::from(*k), v);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topo() -> Topology {
        Topology {
            prefix: "t".into(),
            delivery_limit: 3,
            retry_delays: vec![Duration::from_millis(100), Duration::from_secs(2)],
        }
    }

    #[test]
    fn retry_tiers_grow_then_stay() {
        let t = topo();
        assert_eq!(t.max_attempts(), 3);
        assert_eq!(t.retry_queue(2).unwrap(), "t.jobs.retry.100ms.quorum");
        assert_eq!(t.retry_queue(3).unwrap(), "t.jobs.retry.2000ms.quorum");
        assert_eq!(t.retry_queue(9).unwrap(), "t.jobs.retry.2000ms.quorum");
        let none = Topology {
            retry_delays: vec![],
            ..topo()
        };
        assert_eq!(none.retry_queue(2), None);
    }

    #[test]
    fn job_queue_is_quorum_with_a_delivery_limit_and_dlx() {
        let decls = topo().declarations();
        let jobs = decls
            .iter()
            .find_map(|d| match d {
                Decl::Queue { name, args } if name == "t.jobs" => Some(args.clone()),
                _ => None,
            })
            .unwrap();
        assert!(jobs.contains(&("x-queue-type", Arg::Str("quorum".into()))));
        assert!(jobs.contains(&("x-delivery-limit", Arg::Int(3))));
        assert!(jobs.contains(&("x-dead-letter-exchange", Arg::Str("t.dlx".into()))));
        let retry = decls
            .iter()
            .find_map(|d| match d {
                Decl::Queue { name, args } if name == "t.jobs.retry.100ms.quorum" => {
                    Some(args.clone())
                }
                _ => None,
            })
            .unwrap();
        assert!(retry.contains(&("x-message-ttl", Arg::Int(100))));
        // Every queue is replicated; broker-side moves are at least once.
        for d in &decls {
            if let Decl::Queue { name, args } = d {
                assert!(
                    args.contains(&("x-queue-type", Arg::Str("quorum".into()))),
                    "{name}"
                );
                if args.iter().any(|(k, _)| *k == "x-message-ttl") || name.ends_with("suspect") {
                    assert!(
                        args.contains(&(
                            "x-dead-letter-strategy",
                            Arg::Str("at-least-once".into())
                        )),
                        "{name}"
                    );
                }
            }
        }
        assert!(retry.contains(&("x-dead-letter-routing-key", Arg::Str("t.jobs".into()))));
    }
}
