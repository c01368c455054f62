//! Counting results the at-least-once way: every result of every job id,
//! so a test can report lost jobs and duplicates, not just "the last one".

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use vargpt_proto::JobResult;

use crate::broker::Broker;

#[derive(Debug, Default)]
pub struct Tally {
    /// Every result received, by job id, in arrival order.
    pub results: BTreeMap<String, Vec<JobResult>>,
    /// Messages on the result queue that were not a JobResult.
    pub unreadable: usize,
}

impl Tally {
    pub fn add_bodies<'a>(&mut self, bodies: impl IntoIterator<Item = &'a [u8]>) {
        for b in bodies {
            match serde_json::from_slice::<JobResult>(b) {
                Ok(r) => self.results.entry(r.job_id.clone()).or_default().push(r),
                Err(_) => self.unreadable += 1,
            }
        }
    }

    /// Ids of `want` without any result.
    pub fn lost<'a>(&self, want: &'a [String]) -> Vec<&'a String> {
        want.iter()
            .filter(|id| !self.results.contains_key(*id))
            .collect()
    }

    /// Results beyond the first, summed over all jobs.
    pub fn duplicates(&self) -> usize {
        self.results
            .values()
            .map(|v| v.len().saturating_sub(1))
            .sum()
    }

    /// Job ids answered more than once.
    pub fn duplicated_ids(&self) -> Vec<&String> {
        self.results
            .iter()
            .filter(|(_, v)| v.len() > 1)
            .map(|(k, _)| k)
            .collect()
    }

    pub fn answered(&self) -> usize {
        self.results.len()
    }

    /// The last result of a job (what a client that keeps the newest sees).
    pub fn last(&self, id: &str) -> Option<&JobResult> {
        self.results.get(id).and_then(|v| v.last())
    }

    /// Reads `queue` until every id of `want` has a result or `timeout`
    /// passes; broker errors are retried (the node may be failing over)
    /// within the same bound. Then drains what else is already there for
    /// `linger`, so late duplicates are counted too.
    pub async fn collect(
        &mut self,
        broker: &Broker,
        queue: &str,
        want: &[String],
        timeout: Duration,
        linger: Duration,
    ) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut errors = Vec::new();
        while !self.lost(want).is_empty() && Instant::now() < deadline {
            let left = self.lost(want).len();
            match broker.collect(queue, left, Duration::from_secs(2)).await {
                Ok(msgs) => self.add_bodies(msgs.iter().map(|m| m.body.as_slice())),
                Err(e) => {
                    errors.push(format!("{e:#}"));
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        if !linger.is_zero() {
            if let Ok(msgs) = broker.collect(queue, usize::MAX, linger).await {
                self.add_bodies(msgs.iter().map(|m| m.body.as_slice()));
            }
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(id: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "version": 1, "jobId": id, "status": "ok", "kind": "chat"
        }))
        .unwrap()
    }

    #[test]
    fn counts_lost_and_duplicated_jobs() {
        let mut t = Tally::default();
        let (a, b, junk) = (result("a"), result("b"), b"nope".to_vec());
        t.add_bodies([a.as_slice(), b.as_slice(), a.as_slice(), junk.as_slice()]);
        let want = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        assert_eq!(t.lost(&want), [&"c".to_string()]);
        assert_eq!(t.duplicates(), 1);
        assert_eq!(t.duplicated_ids(), [&"a".to_string()]);
        assert_eq!(t.unreadable, 1);
        assert_eq!(t.answered(), 2);
    }
}
