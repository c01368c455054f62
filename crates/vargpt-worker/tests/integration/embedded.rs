//! The embedded mode: the README's first command, no services.

use std::process::Command;

use vargpt_integration_tests::{force_fake_backend, repo_root, tiny_model};
use vargpt_proto::{JobResult, ResultStatus};

use crate::common::{golden, BIN};

fn run(args: &[&str], out: &std::path::Path) -> (i32, Vec<JobResult>, String) {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(repo_root())
        .arg("embedded")
        .args(args)
        .arg("--out")
        .arg(out)
        .env("RUST_LOG", "warn");
    let o = cmd.output().expect("runs");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let results = std::fs::read_to_string(out.join("results.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JobResult per line"))
        .collect();
    (o.status.code().unwrap_or(-1), results, log)
}

/// Real model: `vargpt-worker embedded --model tests/fixtures/reference-tiny
/// --jobs examples/jobs.jsonl --out out/`.
#[test]
fn readme_command_runs_the_example_jobs() {
    let out = tempfile::tempdir().unwrap();
    let model = tiny_model().display().to_string();
    let mut args = vec!["--model", model.as_str(), "--jobs", "examples/jobs.jsonl"];
    if force_fake_backend() {
        args.push("--fake-backend");
    }
    let (code, results, log) = run(&args, out.path());
    assert_eq!(code, 0, "{log}");
    assert_eq!(results.len(), 4, "{log}");
    assert!(
        results.iter().all(|r| r.status == ResultStatus::Ok),
        "{results:#?}"
    );
    let img = results
        .iter()
        .find_map(|r| r.image.clone())
        .expect("the generate_image job made an image");
    let png = std::fs::read(out.path().join(&img.key)).expect("image written under --out");
    image::load_from_memory(&png).expect("it decodes");
}

/// Real model: the reference's caption, VQA, chat and cfg 0 image cases, run
/// embedded, give the reference's texts and image.
#[test]
fn golden_jobs_give_the_reference_answers() {
    let dir = tempfile::tempdir().unwrap();
    let jobs = [
        golden::text_job("cap", "caption"),
        golden::text_job("vqa", "vqa"),
        golden::text_job("chat", "text"),
        golden::image_job("gen", 3),
    ];
    let lines: Vec<String> = jobs.iter().map(|j| j.to_string()).collect();
    let jobs_file = dir.path().join("jobs.jsonl");
    std::fs::write(&jobs_file, lines.join("\n")).unwrap();
    let model = tiny_model().display().to_string();
    let mut args = vec![
        "--model",
        model.as_str(),
        "--jobs",
        jobs_file.to_str().unwrap(),
    ];
    if force_fake_backend() {
        args.push("--fake-backend");
    }
    let out = dir.path().join("out");
    let (code, results, log) = run(&args, &out);
    assert_eq!(code, 0, "{log}");
    assert_eq!(results.len(), 4, "{log}");
    let by_id = |id: &str| {
        let r = results.iter().find(|r| r.job_id == id).expect(id);
        assert_eq!(r.status, ResultStatus::Ok, "{r:#?}");
        r
    };
    let img = by_id("gen").image.clone().expect("an image");
    let png = std::fs::read(out.join(&img.key)).expect("image written under --out");
    // The fake backend answers anything: only the real model is held to the reference.
    if !force_fake_backend() {
        for (id, case) in [("cap", "caption"), ("vqa", "vqa"), ("chat", "text")] {
            assert_eq!(by_id(id).text, golden::text(case), "{id}");
        }
        golden::assert_reference_image(&png, "embedded gen");
    }
}

/// Fake backend: a bad line is answered and dead-lettered to a file, the rest
/// still run, and the exit code says some jobs failed.
#[test]
fn bad_lines_go_to_the_dead_letter_file() {
    let dir = tempfile::tempdir().unwrap();
    let jobs = dir.path().join("jobs.jsonl");
    std::fs::write(&jobs, "{\"id\":\"a\",\"kind\":\"chat\",\"prompt\":\"hi\"}\nnot json\n\n{\"id\":\"b\",\"kind\":\"generate_image\",\"prompt\":\"sun\"}\n").unwrap();
    let out = dir.path().join("out");
    let (code, results, log) = run(
        &[
            "--fake-backend",
            "--model",
            "fake",
            "--jobs",
            jobs.to_str().unwrap(),
        ],
        &out,
    );
    // vargpt_proto::exit_code::FAILED: the run worked, some jobs failed.
    assert_eq!(code, 1, "{log}");
    assert_eq!(results.len(), 3, "{log}");
    assert_eq!(
        results
            .iter()
            .filter(|r| r.status == ResultStatus::Ok)
            .count(),
        2
    );
    let dead = std::fs::read_to_string(out.join("dead-letter.jsonl")).unwrap();
    assert!(
        dead.contains("malformed_json") && dead.contains("not json"),
        "{dead}"
    );
    let b = results.iter().find(|r| r.job_id == "b").unwrap();
    let key = &b.image.as_ref().unwrap().key;
    assert!(
        key.starts_with("images/b-") && out.join(key).is_file(),
        "{key}"
    );
}

/// `examples/jobs.jsonl` stays valid and carries the fixture image.
#[test]
fn example_jobs_are_valid() {
    let text = std::fs::read_to_string(repo_root().join("examples/jobs.jsonl")).unwrap();
    let fixture = std::fs::read(tiny_model().join("test_image.png")).unwrap();
    let mut kinds = Vec::new();
    for line in text.lines() {
        let job = vargpt_proto::parse_job(line.as_bytes(), &Default::default()).expect("valid job");
        if let Some(vargpt_proto::ImageSource::Inline(bytes)) = &job.image {
            assert_eq!(
                bytes, &fixture,
                "{}: the image is tests/fixtures/reference-tiny/test_image.png",
                job.id
            );
        }
        kinds.push(job.kind.as_str());
    }
    assert_eq!(kinds, ["caption", "vqa", "chat", "generate_image"]);
}
