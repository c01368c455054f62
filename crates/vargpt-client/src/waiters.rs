//! Jobs waiting for their result, by correlation id.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::oneshot;
use vargpt_proto::JobResult;

use crate::error::{Error, Result};

pub(crate) type Waiter = oneshot::Sender<Result<JobResult>>;

#[derive(Default)]
pub(crate) struct Waiters {
    state: Mutex<WaitState>,
}

struct Entry {
    tx: Waiter,
    /// The link its job went out on, once published to a private reply
    /// queue: the result dies with that link.
    link: Option<u64>,
}

#[derive(Default)]
struct WaitState {
    by_correlation: HashMap<String, Entry>,
    /// Set once the client is closed for good: why.
    closed: Option<String>,
}

impl Waiters {
    fn lock(&self) -> MutexGuard<'_, WaitState> {
        // A panic while holding this lock leaves the map consistent (each
        // operation is one insert or remove), so poisoning is ignored.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn register(
        &self,
        job_id: &str,
        correlation_id: &str,
    ) -> Result<oneshot::Receiver<Result<JobResult>>> {
        let mut state = self.lock();
        if let Some(reason) = &state.closed {
            return Err(Error::Disconnected {
                job_id: job_id.to_string(),
                reason: reason.clone(),
            });
        }
        if state.by_correlation.contains_key(correlation_id) {
            return Err(Error::DuplicateCorrelationId(correlation_id.to_string()));
        }
        let (tx, rx) = oneshot::channel();
        state
            .by_correlation
            .insert(correlation_id.to_string(), Entry { tx, link: None });
        Ok(rx)
    }

    pub(crate) fn take(&self, correlation_id: &str) -> Option<Waiter> {
        self.lock()
            .by_correlation
            .remove(correlation_id)
            .map(|e| e.tx)
    }

    /// Notes that the job went out on link `link` (see [`Self::fail_link`]).
    pub(crate) fn mark(&self, correlation_id: &str, link: u64) {
        if let Some(e) = self.lock().by_correlation.get_mut(correlation_id) {
            e.link = Some(link);
        }
    }

    /// Fails the jobs published on link `link`, whose private reply queue
    /// is gone; jobs not yet published keep waiting for a new link.
    pub(crate) fn fail_link(&self, link: u64, reason: &str) {
        let failed: Vec<Entry> = {
            let mut state = self.lock();
            let ids: Vec<String> = state
                .by_correlation
                .iter()
                .filter(|(_, e)| e.link == Some(link))
                .map(|(id, _)| id.clone())
                .collect();
            ids.iter()
                .filter_map(|id| state.by_correlation.remove(id))
                .collect()
        };
        fail(failed, reason);
    }

    /// Fails every job waiting now (their results can no longer arrive);
    /// later jobs may still register.
    pub(crate) fn fail_all(&self, reason: &str) {
        let waiting = std::mem::take(&mut self.lock().by_correlation);
        fail(waiting.into_values().collect(), reason);
    }

    /// Fails every waiting job and refuses new ones.
    pub(crate) fn close(&self, reason: &str) {
        self.lock().closed = Some(reason.to_string());
        self.fail_all(reason);
    }

    pub(crate) fn closed(&self) -> Option<String> {
        self.lock().closed.clone()
    }
}

fn fail(entries: Vec<Entry>, reason: &str) {
    for e in entries {
        // The job id is filled in by `submit`, which knows it.
        let _ = e.tx.send(Err(Error::Disconnected {
            job_id: String::new(),
            reason: reason.to_string(),
        }));
    }
}

/// Removes a waiter when its `submit` ends for any reason (result, timeout,
/// error, or the future being dropped).
pub(crate) struct WaiterGuard<'a> {
    pub(crate) waiters: &'a Waiters,
    pub(crate) correlation_id: String,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.waiters.take(&self.correlation_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiters_fail_when_closed_and_refuse_duplicates() {
        let w = Waiters::default();
        let mut rx = w.register("a", "c1").unwrap();
        assert!(matches!(
            w.register("b", "c1"),
            Err(Error::DuplicateCorrelationId(_))
        ));
        w.close("gone");
        assert!(matches!(rx.try_recv(), Ok(Err(Error::Disconnected { .. }))));
        assert!(matches!(
            w.register("c", "c2"),
            Err(Error::Disconnected { .. })
        ));
    }

    #[test]
    fn failing_the_waiting_ones_keeps_the_door_open() {
        let w = Waiters::default();
        let mut rx = w.register("a", "c1").unwrap();
        w.fail_all("connection lost");
        assert!(matches!(rx.try_recv(), Ok(Err(Error::Disconnected { .. }))));
        assert!(w.register("b", "c2").is_ok());
        assert!(w.closed().is_none());
    }

    #[test]
    fn a_lost_link_fails_only_the_jobs_it_carried() {
        let w = Waiters::default();
        let mut on_old = w.register("a", "c1").unwrap();
        let mut unsent = w.register("b", "c2").unwrap();
        let mut on_new = w.register("c", "c3").unwrap();
        w.mark("c1", 0);
        w.mark("c3", 1);
        w.fail_link(0, "lost");
        assert!(matches!(
            on_old.try_recv(),
            Ok(Err(Error::Disconnected { .. }))
        ));
        assert!(unsent.try_recv().is_err(), "still waiting");
        assert!(on_new.try_recv().is_err(), "still waiting");
        assert!(w.take("c2").is_some() && w.take("c3").is_some());
    }
}
