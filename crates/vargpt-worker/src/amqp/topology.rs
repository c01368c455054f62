//! Queues and exchanges, declared idempotently by every worker at connect.
//!
//! ```text
//! client ──► (default exchange) ──► {p}.jobs   quorum, x-delivery-limit,
//!                                     │          DLX {p}.dlx / "dead"
//!                 worker ─────────────┤
//!   result ──► reply_to queue, or ──► {p}.results (topic, key "{kind}.{status}") ──► {p}.results queue ("#")
//!   bad job ──► {p}.dlx (direct) ── "dead" ──► {p}.dead          (annotated copy)
//!   transient ─► {p}.jobs.retry.{ms}ms  (TTL; dead-letters back to {p}.jobs)
//!   crash loop: after x-delivery-limit deliveries the broker itself
//!               dead-letters to {p}.dlx / "dead" (the worker answers
//!               worker_crashed one delivery earlier).
//! ```
//!
//! Queue arguments are part of a queue's identity: declaring an existing
//! queue with other arguments fails. Retry queues therefore carry their
//! delay in their name, so changing the back-off creates new queues.

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};

/// Routing key of dead letters on the dead-letter exchange.
pub const DEAD_ROUTING_KEY: &str = "dead";

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
    pub fn jobs_queue(&self) -> String {
        format!("{}.jobs", self.prefix)
    }

    pub fn results_exchange(&self) -> String {
        format!("{}.results", self.prefix)
    }

    pub fn results_queue(&self) -> String {
        format!("{}.results", self.prefix)
    }

    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dlx", self.prefix)
    }

    pub fn dead_queue(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    /// Attempts for transient failures, the first included.
    pub fn max_attempts(&self) -> u32 {
        self.retry_delays.len() as u32 + 1
    }

    fn retry_queue_for_delay(&self, d: Duration) -> String {
        format!("{}.jobs.retry.{}ms", self.prefix, d.as_millis())
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
            // Classic: per-queue TTL works on every RabbitMQ 3.x, and a retry
            // queue only ever holds copies that are also safe to lose
            // (the original is acked only after the copy is confirmed).
            out.push(Decl::Queue {
                name: self.retry_queue_for_delay(d),
                args: vec![
                    ("x-queue-type", s("classic")),
                    ("x-message-ttl", Arg::Int(d.as_millis() as i64)),
                    ("x-dead-letter-exchange", s("")),
                    ("x-dead-letter-routing-key", s(&jobs)),
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
        assert_eq!(t.retry_queue(2).unwrap(), "t.jobs.retry.100ms");
        assert_eq!(t.retry_queue(3).unwrap(), "t.jobs.retry.2000ms");
        assert_eq!(t.retry_queue(9).unwrap(), "t.jobs.retry.2000ms");
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
                Decl::Queue { name, args } if name == "t.jobs.retry.100ms" => Some(args.clone()),
                _ => None,
            })
            .unwrap();
        assert!(retry.contains(&("x-message-ttl", Arg::Int(100))));
        assert!(retry.contains(&("x-dead-letter-routing-key", Arg::Str("t.jobs".into()))));
    }
}
