//! The scheduler on the real tiny model: a request that fails inside a running
//! batch (here: its observer panics mid-step) fails alone, and every other
//! request of the batch ends exactly as it does alone.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use vargpt_engine::{
    BatchConfig, Engine, EngineError, LoadOptions, Observer, Request, SamplingParams, Scheduler,
    Task,
};

fn fixture() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/reference-tiny"
    ))
}

/// Panics at the first token it sees: a fault inside the engine's step.
struct PanicsOnToken;

impl Observer for PanicsOnToken {
    fn on_token(&mut self, _id: u32) {
        panic!("observer panicked");
    }
}

fn chat(text: &str, params: SamplingParams) -> Request {
    Request {
        task: Task::Chat,
        text: text.into(),
        image: None,
        params,
    }
}

#[test]
fn a_request_failing_inside_a_batch_fails_alone_and_the_others_match_their_runs_alone() {
    let e = Arc::new(Engine::load(&LoadOptions::new(fixture().to_str().unwrap())).unwrap());
    let greedy = |n| SamplingParams {
        max_new_tokens: n,
        allow_image: false,
        ..Default::default()
    };
    let innocents = [
        chat("Please describe a cat on a sofa.", greedy(10)),
        chat(
            "Tell me a story about the sea.",
            SamplingParams {
                greedy: false,
                seed: Some(5),
                ..greedy(8)
            },
        ),
        Request {
            task: Task::GenerateImage,
            text: "a butterfly".into(),
            image: None,
            params: SamplingParams {
                seed: Some(3),
                ..Default::default()
            },
        },
    ];
    let alone: Vec<_> = innocents.iter().map(|r| e.run(r).unwrap()).collect();

    let biggest = Arc::new(AtomicUsize::new(0));
    let seen = biggest.clone();
    let sched = Scheduler::spawn(
        e.clone(),
        BatchConfig {
            max_batch: 8,
            max_tokens_per_step: 4096,
            on_step: Some(Arc::new(move |n| {
                seen.fetch_max(n, Ordering::SeqCst);
            })),
        },
    );
    let mut rxs: Vec<_> = innocents[..2]
        .iter()
        .map(|r| sched.submit(r.clone()))
        .collect();
    let (tx, culprit) = std::sync::mpsc::channel();
    sched.submit_with(
        chat("Hi", greedy(4)),
        Box::new(PanicsOnToken),
        Box::new(move |r| {
            let _ = tx.send(r);
        }),
    );
    rxs.push(sched.submit(innocents[2].clone()));

    let wait = Duration::from_secs(600);
    for (i, rx) in rxs.iter().enumerate() {
        let got = rx.recv_timeout(wait).unwrap().unwrap();
        assert_eq!(got.ids, alone[i].ids, "request {i}");
        assert_eq!(got.text, alone[i].text, "request {i}");
        let (a, b) = (got.image.as_ref(), alone[i].image.as_ref());
        assert_eq!(a.map(|x| &x.codes), b.map(|x| &x.codes), "request {i}");
        assert_eq!(a.map(|x| &x.rgb), b.map(|x| &x.rgb), "request {i}");
    }
    let err = culprit.recv_timeout(wait).unwrap().unwrap_err();
    assert!(
        matches!(&err, EngineError::Internal(m) if m.contains("observer panicked")),
        "{err}"
    );
    assert!(
        biggest.load(Ordering::SeqCst) > 1,
        "the requests never shared a step"
    );
    assert!(sched.is_alive());
    // The scheduler goes on serving.
    let again = sched
        .submit(innocents[0].clone())
        .recv_timeout(wait)
        .unwrap();
    assert_eq!(again.unwrap().ids, alone[0].ids);
}
