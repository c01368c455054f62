//! Batched results equal unbatched ones: static batches (`run_batch`) and continuous
//! batching (`Scheduler`, requests joining and leaving between steps), on the
//! reference fixture and on a checkpoint of another shape.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use vargpt_engine::{
    BatchConfig, Engine, LoadOptions, Request, Response, SamplingParams, Scheduler, Task,
};
use vargpt_testkit::{make_checkpoint, CheckpointSpec};

fn fixture() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/reference-tiny"
    ))
}

fn png() -> Vec<u8> {
    std::fs::read(fixture().join("test_image.png")).unwrap()
}

fn mixed_requests() -> Vec<Request> {
    let greedy = |n| SamplingParams {
        max_new_tokens: n,
        allow_image: false,
        ..Default::default()
    };
    let sampled = |seed| SamplingParams {
        greedy: false,
        seed: Some(seed),
        max_new_tokens: 9,
        allow_image: false,
        ..Default::default()
    };
    let r = |task, text: &str, image: Option<Vec<u8>>, params| Request {
        task,
        text: text.into(),
        image,
        params,
    };
    vec![
        r(
            Task::Caption,
            "Describe the image.",
            Some(png()),
            greedy(12),
        ),
        r(
            Task::Vqa,
            "What is the color of the car?",
            Some(png()),
            greedy(5),
        ),
        r(
            Task::Chat,
            "Please describe a cat on a sofa.",
            None,
            greedy(12),
        ),
        r(Task::Chat, "Hi", None, greedy(3)),
        r(
            Task::Chat,
            "Tell me a long story about the sea and the wind.",
            None,
            sampled(11),
        ),
        r(
            Task::GenerateImage,
            "a butterfly",
            None,
            SamplingParams {
                cfg_scale: 0.0,
                image_top_k: 1,
                ..Default::default()
            },
        ),
        r(
            Task::GenerateImage,
            "a flower",
            None,
            SamplingParams {
                seed: Some(5),
                ..Default::default()
            },
        ),
        r(Task::Caption, "Describe the image.", Some(png()), greedy(7)),
    ]
}

fn same(a: &Response, b: &Response, what: &str) {
    assert_eq!(a.prompt_ids, b.prompt_ids, "{what}: prompt ids");
    assert_eq!(a.ids, b.ids, "{what}: generated ids");
    assert_eq!(a.text, b.text, "{what}: text");
    assert_eq!(a.finish_reason, b.finish_reason, "{what}: finish");
    match (&a.image, &b.image) {
        (Some(x), Some(y)) => {
            assert_eq!(x.codes, y.codes, "{what}: codes");
            assert_eq!((x.width, x.height), (y.width, y.height), "{what}: size");
            // Batching is bit-for-bit (see ragged_forward_is_bitwise_the_forward_alone)
            // and the VQVAE decodes each image alone: the bytes are identical.
            let differ = x.rgb.iter().zip(&y.rgb).filter(|(p, q)| p != q).count();
            assert!(
                differ == 0 && x.rgb.len() == y.rgb.len(),
                "{what}: {differ} of {} image bytes differ",
                x.rgb.len()
            );
        }
        (None, None) => {}
        _ => panic!("{what}: image presence differs"),
    }
}

fn check_static(e: &Engine, label: &str) {
    let reqs = mixed_requests();
    let alone: Vec<Response> = reqs.iter().map(|r| e.run(r).unwrap()).collect();
    let together = e.run_batch(&reqs);
    for (i, (a, b)) in alone.iter().zip(together).enumerate() {
        same(a, &b.unwrap(), &format!("{label} request {i}"));
    }
}

#[test]
fn static_batch_equals_unbatched_on_the_reference_fixture() {
    let e = Engine::load(&LoadOptions::new(fixture().to_str().unwrap())).unwrap();
    check_static(&e, "reference");
}

#[test]
fn static_batch_equals_unbatched_on_another_shape() {
    let dir = tempfile::tempdir().unwrap();
    make_checkpoint(dir.path(), &CheckpointSpec::small()).unwrap();
    let e = Engine::load(&LoadOptions::new(dir.path().to_str().unwrap())).unwrap();
    check_static(&e, "small");
}

#[test]
fn continuous_batching_admits_between_steps_and_matches() {
    let e = Arc::new(Engine::load(&LoadOptions::new(fixture().to_str().unwrap())).unwrap());
    let reqs = mixed_requests();
    let alone: Vec<Response> = reqs.iter().map(|r| e.run(r).unwrap()).collect();
    let biggest = Arc::new(AtomicUsize::new(0));
    let b2 = biggest.clone();
    let sched = Scheduler::spawn(
        e.clone(),
        BatchConfig {
            max_batch: 4,
            max_tokens_per_step: 256,
            on_step: Some(Arc::new(move |n| {
                b2.fetch_max(n, Ordering::SeqCst);
            })),
        },
    );
    // First wave, then more requests while the first ones are still running.
    let mut rxs: Vec<_> = reqs[..3].iter().map(|r| sched.submit(r.clone())).collect();
    std::thread::sleep(std::time::Duration::from_millis(5));
    rxs.extend(reqs[3..].iter().map(|r| sched.submit(r.clone())));
    // A bad request in the middle gets its own error and harms no one.
    let bad = sched.submit(Request {
        task: Task::Caption,
        text: String::new(),
        image: Some(b"nope".to_vec()),
        params: SamplingParams::default(),
    });
    for (i, rx) in rxs.into_iter().enumerate() {
        same(
            &alone[i],
            &rx.recv().unwrap().unwrap(),
            &format!("scheduled request {i}"),
        );
    }
    assert!(bad.recv().unwrap().is_err());
    let max = biggest.load(Ordering::SeqCst);
    assert!(max > 1 && max <= 4, "batch sizes seen: up to {max}");
}

/// Bit-for-bit, below the tokens: a sequence's hidden states and VAR logits are
/// the same alone and in a ragged batch whose other sequences are long (a
/// prefill past the small-m limit of AVX2 CPUs) or short (decode rows, small
/// stages). Run with `VARGPT_ISA=avx2` on AVX-512 machines (`scripts/test-all`
/// does) to cover the CPUs where those lengths take different kernels.
#[test]
fn ragged_forward_is_bitwise_the_forward_alone() {
    use candle_core::{Device, Tensor};
    let dir = tempfile::tempdir().unwrap();
    make_checkpoint(dir.path(), &CheckpointSpec::small()).unwrap();
    let e = Engine::load(&LoadOptions::new(dir.path().to_str().unwrap())).unwrap();
    let m = e.model();
    let long = vargpt_kernels::SMALL_M_MAX + 9;
    let lens = [3, long, 1, long + 2];
    let bits = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();

    let hd = m.config.llm_hidden();
    let xs: Vec<Tensor> = lens
        .iter()
        .map(|&l| Tensor::randn(0f32, 1.0, (l, hd), &Device::Cpu).unwrap())
        .collect();
    let alone: Vec<Vec<f32>> = xs
        .iter()
        .map(|x| {
            bits(
                &m.llm
                    .forward(&x.unsqueeze(0).unwrap(), &mut m.llm.new_cache())
                    .unwrap(),
            )
        })
        .collect();
    let mut caches: Vec<_> = lens.iter().map(|_| m.llm.new_cache()).collect();
    let mut segments: Vec<_> = caches.iter_mut().zip(lens).collect();
    let together = bits(
        &m.llm
            .forward_ragged(&Tensor::cat(&xs, 0).unwrap(), &mut segments)
            .unwrap(),
    );
    same_bits(&alone, &together, "LLaMA");

    let c = m.var.config().width();
    let cls = m.var.class_embedding(0).unwrap();
    let xs: Vec<Tensor> = lens
        .iter()
        .map(|&l| Tensor::randn(0f32, 1.0, (l, c), &Device::Cpu).unwrap())
        .collect();
    let alone: Vec<Vec<f32>> = xs
        .iter()
        .zip(lens)
        .map(|(x, l)| {
            let mut cache = m.var.new_cache();
            bits(
                &m.var
                    .forward_ragged(x, &cls, &mut [(&mut cache, l)])
                    .unwrap(),
            )
        })
        .collect();
    let mut caches: Vec<_> = lens.iter().map(|_| m.var.new_cache()).collect();
    let mut segments: Vec<_> = caches.iter_mut().zip(lens).collect();
    let together = bits(
        &m.var
            .forward_ragged(&Tensor::cat(&xs, 0).unwrap(), &cls, &mut segments)
            .unwrap(),
    );
    same_bits(&alone, &together, "VAR");
}

/// `together` is the sequences of `alone`, back to back, bit for bit.
fn same_bits(alone: &[Vec<f32>], together: &[f32], what: &str) {
    let mut at = 0;
    for (i, a) in alone.iter().enumerate() {
        assert_eq!(a[..], together[at..at + a.len()], "{what} sequence {i}");
        at += a.len();
    }
    assert_eq!(at, together.len(), "{what}: rows left over");
}
