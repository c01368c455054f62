//! The batching thread with a stand-in for the engine (no model): requests say in
//! their text what the stand-in does with them.

use super::*;
use crate::request::{FinishReason, SamplingParams, Task, Timings};
use std::sync::Condvar;
use std::time::Duration;

/// How long a test waits for an answer before it fails (never reached when it passes).
const WAIT: Duration = Duration::from_secs(60);

/// `ok:N` takes N steps; `fail` fails every step it is in; `panic` panics in
/// every step it is in; `panic_start` panics when started; `forever` never
/// finishes; `die` panics in `is_done`, outside any containment; `gate:N` is
/// `ok:N` whose start waits for [`Fake::open`].
#[derive(Default)]
struct Fake {
    gate: (Mutex<bool>, Condvar),
}

impl Fake {
    fn open(&self) {
        *self.gate.0.lock().unwrap() = true;
        self.gate.1.notify_all();
    }
}

struct FakeSeq {
    text: String,
    left: usize,
    ids: Vec<u32>,
}

fn steps_of(text: &str) -> usize {
    text.rsplit(':')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
}

impl Stepper for Fake {
    type Seq = FakeSeq;

    fn start(&self, req: &Request, _o: Box<dyn Observer + Send>) -> Result<FakeSeq, EngineError> {
        match req.text.as_str() {
            "panic_start" => panic!("fake start panicked"),
            "bad" => return Err(EngineError::InvalidRequest("bad".into())),
            t if t.starts_with("gate") => {
                let mut open = self.gate.0.lock().unwrap();
                while !*open {
                    open = self.gate.1.wait(open).unwrap();
                }
            }
            _ => {}
        }
        Ok(FakeSeq {
            text: req.text.clone(),
            left: if req.text == "forever" {
                usize::MAX
            } else {
                steps_of(&req.text)
            },
            ids: Vec::new(),
        })
    }
    fn rows(&self, _seq: &FakeSeq) -> usize {
        1
    }
    fn is_done(&self, seq: &FakeSeq) -> bool {
        if seq.text == "die" {
            panic!("fake is_done panicked");
        }
        seq.left == 0
    }
    fn step(&self, seqs: &mut [&mut FakeSeq]) -> Result<(), EngineError> {
        if seqs.iter().any(|s| s.text == "panic") {
            panic!("fake step panicked");
        }
        if seqs.iter().any(|s| s.text == "fail") {
            return Err(EngineError::Inference("fake step failed".into()));
        }
        for s in seqs.iter_mut() {
            s.ids.push(s.left as u32);
            s.left -= 1;
        }
        Ok(())
    }
    fn finish(&self, seq: FakeSeq) -> Result<Response, EngineError> {
        Ok(Response {
            prompt: seq.text.clone(),
            prompt_ids: Vec::new(),
            ids: seq.ids,
            text: seq.text,
            image: None,
            finish_reason: FinishReason::Eos,
            timings: Timings::default(),
            positions: 0,
        })
    }
}

fn req(text: &str) -> Request {
    Request {
        task: Task::Chat,
        text: text.into(),
        image: None,
        params: SamplingParams::default(),
    }
}

/// The answer a request gets running alone: ids N, N-1, …, 1.
fn alone_ids(text: &str) -> Vec<u32> {
    (1..=steps_of(text) as u32).rev().collect()
}

type Answers = Receiver<Result<Response, EngineError>>;

/// A scheduler whose first request (`gate:1`) holds the thread until all of
/// `texts` are queued, so that they start together in one batch; `forever`
/// requests get the time bound `limit`.
fn batch_of(
    texts: &[&str],
    limit: Option<Duration>,
) -> (Scheduler, Vec<Answers>, Arc<Mutex<Vec<usize>>>) {
    let fake = Arc::new(Fake::default());
    let sizes = Arc::new(Mutex::new(Vec::new()));
    let seen = sizes.clone();
    let sched = Scheduler::spawn_with(
        fake.clone(),
        BatchConfig {
            max_batch: 16,
            max_tokens_per_step: 1000,
            on_step: Some(Arc::new(move |n| seen.lock().unwrap().push(n))),
        },
    );
    let mut rxs = vec![sched.submit(req("gate:1"))];
    rxs.extend(
        texts
            .iter()
            .map(|&t| sched.submit_within(req(t), limit.filter(|_| t == "forever"))),
    );
    fake.open();
    (sched, rxs, sizes)
}

fn answer(rx: &Answers) -> Result<Response, EngineError> {
    rx.recv_timeout(WAIT).expect("an answer")
}

fn assert_ok_as_alone(rx: &Answers, text: &str) {
    let r = answer(rx).unwrap_or_else(|e| panic!("{text}: {e}"));
    assert_eq!(r.ids, alone_ids(text), "{text}");
}

#[test]
fn a_failing_step_fails_only_its_request() {
    let texts = ["ok:3", "fail", "ok:5", "ok:2"];
    let (sched, rxs, sizes) = batch_of(&texts, None);
    assert_ok_as_alone(&rxs[0], "gate:1");
    for (rx, t) in rxs[1..].iter().zip(texts) {
        if t == "fail" {
            let e = answer(rx).unwrap_err();
            assert!(
                matches!(&e, EngineError::Inference(m) if m.contains("fake step failed")),
                "{e}"
            );
        } else {
            assert_ok_as_alone(rx, t);
        }
    }
    // One step of all five, then each alone.
    let sizes = sizes.lock().unwrap().clone();
    assert_eq!(sizes[0], 5, "{sizes:?}");
    assert!(sizes[1..].iter().all(|&n| n == 1), "{sizes:?}");
    assert!(sched.is_alive());
}

#[test]
fn a_panicking_step_fails_only_its_request_and_the_thread_lives_on() {
    let texts = ["ok:2", "panic", "ok:4"];
    let (sched, rxs, _) = batch_of(&texts, None);
    assert_ok_as_alone(&rxs[1], "ok:2");
    let e = answer(&rxs[2]).unwrap_err();
    assert!(
        matches!(&e, EngineError::Internal(m) if m.contains("fake step panicked")),
        "{e}"
    );
    assert_ok_as_alone(&rxs[3], "ok:4");
    assert!(sched.is_alive());
    assert_ok_as_alone(&sched.submit(req("ok:3")), "ok:3");
}

#[test]
fn a_failed_or_panicking_start_fails_only_its_request() {
    let texts = ["ok:2", "panic_start", "bad", "ok:1"];
    let (sched, rxs, sizes) = batch_of(&texts, None);
    assert_ok_as_alone(&rxs[1], "ok:2");
    let e = answer(&rxs[2]).unwrap_err();
    assert!(
        matches!(&e, EngineError::Internal(m) if m.contains("fake start panicked")),
        "{e}"
    );
    assert!(matches!(
        answer(&rxs[3]),
        Err(EngineError::InvalidRequest(_))
    ));
    assert_ok_as_alone(&rxs[4], "ok:1");
    // A start's failure is its own: the others were never re-run alone.
    assert_eq!(sizes.lock().unwrap()[0], 3);
    drop(sched);
}

#[test]
fn a_request_past_its_time_bound_is_dropped_with_a_timeout() {
    let texts = ["forever", "ok:3"];
    let (sched, rxs, _) = batch_of(&texts, Some(Duration::from_millis(30)));
    let e = answer(&rxs[1]).unwrap_err();
    assert!(
        matches!(e, EngineError::Timeout { limit } if limit == Duration::from_millis(30)),
        "{e}"
    );
    assert_ok_as_alone(&rxs[2], "ok:3");
    // A bound already past when the request would start: it never starts.
    let e = answer(&sched.submit_within(req("ok:1"), Some(Duration::ZERO))).unwrap_err();
    assert!(matches!(e, EngineError::Timeout { .. }), "{e}");
    assert_ok_as_alone(&sched.submit(req("ok:2")), "ok:2");
}

#[test]
fn a_dead_batching_thread_is_reported_and_refuses_new_work() {
    let sched = Scheduler::spawn_with(Fake::default(), BatchConfig::default());
    // The request that kills the thread is answered as it goes down.
    let e = answer(&sched.submit(req("die"))).unwrap_err();
    assert!(matches!(e, EngineError::Internal(_)), "{e}");
    let t0 = Instant::now();
    while sched.is_alive() {
        assert!(t0.elapsed() < WAIT, "the scheduler still says alive");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Answered at once, not queued.
    let rx = sched.submit(req("ok:1"));
    assert!(matches!(rx.try_recv(), Ok(Err(EngineError::Internal(_)))));
}

#[test]
fn dropping_the_handle_finishes_queued_work() {
    let sched = Scheduler::spawn_with(Fake::default(), BatchConfig::default());
    let rxs: Vec<_> = (1..=5)
        .map(|n| sched.submit(req(&format!("ok:{n}"))))
        .collect();
    drop(sched);
    for (n, rx) in (1..=5).zip(rxs) {
        assert_ok_as_alone(&rx, &format!("ok:{n}"));
    }
}
