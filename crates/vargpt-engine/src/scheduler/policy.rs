//! The batching policy, apart from any model: which waiting requests join the
//! running batch, what happens to a batch whose step failed, and which requests
//! leave it. The batching thread ([`super::batcher`]) only carries it out.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Limits of one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Most sequences stepped together (at least 1).
    pub max_batch: usize,
    /// Most new LLM rows per step. A soft bound: admission stops at the request
    /// that crosses it, and a lone request is always admitted.
    pub max_tokens_per_step: usize,
}

/// The running batch, as the policy sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Load {
    /// Sequences in the batch.
    pub seqs: usize,
    /// LLM rows they feed to the next step.
    pub rows: usize,
    /// The batch is one request re-run alone after a failed step: nothing joins it.
    pub alone: bool,
}

/// How a waiting request joins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Join {
    /// Into the running batch.
    Batch,
    /// Alone: a re-run after a failed step, to find out whether it is at fault.
    Alone,
}

/// What to do after a step failed (an error or a panic).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// The batch was one request: it is at fault and gets the error.
    Blame,
    /// Drop every sequence and re-run each request alone from the start.
    Isolate,
}

/// Why a request leaves the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leave {
    Finished,
    /// Past its time bound.
    TimedOut,
}

/// A request's time bound: a limit counted from its submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    pub at: Instant,
    pub limit: Duration,
}

impl Deadline {
    pub fn after(limit: Duration, from: Instant) -> Self {
        Deadline {
            at: from + limit,
            limit,
        }
    }

    pub fn passed(&self, now: Instant) -> bool {
        now >= self.at
    }
}

impl Policy {
    pub fn new(max_batch: usize, max_tokens_per_step: usize) -> Self {
        Policy {
            max_batch: max_batch.max(1),
            max_tokens_per_step: max_tokens_per_step.max(1),
        }
    }

    /// May one more request join a batch with this load?
    pub fn has_room(&self, load: Load) -> bool {
        if load.alone {
            return false;
        }
        load.seqs == 0 || (load.seqs < self.max_batch && load.rows <= self.max_tokens_per_step)
    }

    /// The next request to start, if any: re-runs first, each alone in an empty
    /// batch; then the waiting ones in arrival order while there is room.
    pub fn next<T>(&self, queue: &mut Queue<T>, load: Load) -> Option<(T, Join)> {
        if !queue.isolated.is_empty() {
            return match load.seqs {
                0 => queue.isolated.pop_front().map(|t| (t, Join::Alone)),
                _ => None,
            };
        }
        if self.has_room(load) {
            queue.waiting.pop_front().map(|t| (t, Join::Batch))
        } else {
            None
        }
    }

    /// After a failed step of a batch of `seqs` sequences.
    pub fn on_failure(&self, seqs: usize) -> OnFailure {
        if seqs <= 1 {
            OnFailure::Blame
        } else {
            OnFailure::Isolate
        }
    }

    /// Whether a running request leaves the batch after a step.
    pub fn leaves(&self, done: bool, deadline: Option<Deadline>, now: Instant) -> Option<Leave> {
        if done {
            Some(Leave::Finished)
        } else if deadline.is_some_and(|d| d.passed(now)) {
            Some(Leave::TimedOut)
        } else {
            None
        }
    }
}

/// Requests not yet started: new ones, and those to re-run alone.
#[derive(Debug)]
pub struct Queue<T> {
    waiting: VecDeque<T>,
    isolated: VecDeque<T>,
}

impl<T> Default for Queue<T> {
    fn default() -> Self {
        Queue {
            waiting: VecDeque::new(),
            isolated: VecDeque::new(),
        }
    }
}

impl<T> Queue<T> {
    pub fn push(&mut self, t: T) {
        self.waiting.push_back(t);
    }

    /// Queues a request of a failed batch to be re-run alone.
    pub fn isolate(&mut self, t: T) {
        self.isolated.push_back(t);
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty() && self.isolated.is_empty()
    }

    pub fn len(&self) -> usize {
        self.waiting.len() + self.isolated.len()
    }

    /// Takes out the requests for which `expired` holds.
    pub fn take_expired(&mut self, mut expired: impl FnMut(&T) -> bool) -> Vec<T> {
        let mut out = Vec::new();
        for q in [&mut self.waiting, &mut self.isolated] {
            let (gone, kept): (VecDeque<T>, VecDeque<T>) = q.drain(..).partition(&mut expired);
            *q = kept;
            out.extend(gone);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(seqs: usize, rows: usize) -> Load {
        Load {
            seqs,
            rows,
            alone: false,
        }
    }

    /// Admits from `queue` (rows of each request) into a batch of `running` rows.
    fn admit(p: &Policy, running: &[usize], queue: &[usize]) -> Vec<usize> {
        let mut q = Queue::default();
        queue.iter().for_each(|&r| q.push(r));
        let mut l = load(running.len(), running.iter().sum());
        let mut joined = Vec::new();
        while let Some((r, how)) = p.next(&mut q, l) {
            assert_eq!(how, Join::Batch);
            joined.push(r);
            l.seqs += 1;
            l.rows += r;
        }
        joined
    }

    #[test]
    fn a_lone_request_is_always_admitted() {
        let p = Policy::new(4, 10);
        assert_eq!(admit(&p, &[], &[500, 1]), vec![500]);
    }

    #[test]
    fn admission_stops_at_the_request_that_crosses_the_budget() {
        let p = Policy::new(8, 256);
        assert_eq!(admit(&p, &[], &[100, 100, 100, 5]), vec![100, 100, 100]);
        assert_eq!(admit(&p, &[1, 1], &[200, 60, 1]), vec![200, 60]);
        // A batch already over budget takes no one.
        assert_eq!(admit(&p, &[300], &[1]), Vec::<usize>::new());
    }

    #[test]
    fn the_batch_never_exceeds_max_batch() {
        let p = Policy::new(3, 1000);
        assert_eq!(admit(&p, &[], &[1; 10]), vec![1, 1, 1]);
        assert_eq!(admit(&p, &[1, 1], &[1; 10]), vec![1]);
        // Zero limits are read as one.
        assert_eq!(admit(&Policy::new(0, 0), &[], &[1, 1]), vec![1]);
    }

    #[test]
    fn after_a_failed_batch_each_request_runs_alone_before_new_ones() {
        let p = Policy::new(8, 1000);
        assert_eq!(p.on_failure(1), OnFailure::Blame);
        assert_eq!(p.on_failure(3), OnFailure::Isolate);
        let mut q = Queue::default();
        q.push("new");
        q.isolate("a");
        q.isolate("b");
        // Nothing starts while a batch runs; the re-runs go one at a time.
        assert_eq!(p.next(&mut q, load(1, 1)), None);
        assert_eq!(p.next(&mut q, load(0, 0)), Some(("a", Join::Alone)));
        let alone = Load {
            seqs: 1,
            rows: 1,
            alone: true,
        };
        assert!(!p.has_room(alone));
        assert_eq!(p.next(&mut q, alone), None);
        assert_eq!(p.next(&mut q, load(0, 0)), Some(("b", Join::Alone)));
        assert_eq!(p.next(&mut q, load(0, 0)), Some(("new", Join::Batch)));
        assert!(q.is_empty());
    }

    #[test]
    fn finished_and_expired_requests_leave() {
        let p = Policy::new(2, 10);
        let now = Instant::now();
        let past = Deadline::after(Duration::ZERO, now);
        let future = Deadline::after(Duration::from_secs(3600), now);
        assert_eq!(p.leaves(true, Some(past), now), Some(Leave::Finished));
        assert_eq!(p.leaves(false, Some(past), now), Some(Leave::TimedOut));
        assert_eq!(p.leaves(false, Some(future), now), None);
        assert_eq!(p.leaves(false, None, now), None);
    }

    #[test]
    fn expired_requests_are_taken_from_both_queues_in_order() {
        let mut q = Queue::default();
        (1..=5).for_each(|i| q.push(i));
        q.isolate(6);
        assert_eq!(q.take_expired(|&i| i % 2 == 0), vec![2, 4, 6]);
        assert_eq!(q.len(), 3);
        let p = Policy::new(8, 100);
        let order: Vec<i32> =
            std::iter::from_fn(|| p.next(&mut q, load(0, 0)).map(|(i, _)| i)).collect();
        assert_eq!(order, vec![1, 3, 5]);
    }
}
