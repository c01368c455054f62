//! What a run hands to dataset tools, and the command-line conventions it
//! shares with the worker: `source` on every line, `--table`,
//! `--queue-prefix`, `VARGPT_<FLAG>` (old names with a warning), exit codes.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use vargpt_client::testing::{unique_name, FakeWorker, FakeWorkerOptions};
use vargpt_dispatcher::table::COLUMNS;
use vargpt_proto::wire::Names;

async fn run(cmd: Command) -> std::process::Output {
    tokio::task::spawn_blocking(move || run_to_end(cmd, Duration::from_secs(60)))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_line_names_its_image_and_the_table_has_one_row_per_job() {
    let (_dir, root) = tmp();
    let images = root.join("images");
    write_pngs(&images, 5);
    let prefix = unique_name("prefix");
    let _worker = FakeWorker::start(
        &amqp_url(),
        &Names::new(&prefix).jobs_queue(),
        FakeWorkerOptions::default(),
    )
    .await
    .unwrap();
    let output = root.join("out.jsonl");
    let table = root.join("out.csv");
    let mut cmd = dispatcher_without_queue(&images, &output);
    cmd.args(["--queue-prefix", &prefix, "--prompt", "Say \"hi\", briefly"])
        .arg("--table")
        .arg(&table);
    let out = run(cmd).await;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("deprecated"), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("(5 rows)"));

    let results = results_by_id(&output);
    assert_eq!(results.len(), 5);
    let mut sources: Vec<(String, String)> = results
        .iter()
        .map(|(id, line)| {
            assert_eq!(line["prompt"], "Say \"hi\", briefly");
            (line["source"].as_str().unwrap().to_string(), id.clone())
        })
        .collect();
    sources.sort();
    let mut expected: Vec<String> = expected_names_and_ids(&images)
        .into_iter()
        .map(|(name, _)| images.join(name).display().to_string())
        .collect();
    expected.sort();
    assert_eq!(
        sources.iter().map(|(s, _)| s.clone()).collect::<Vec<_>>(),
        expected
    );
    // The source and prompt come first on the line, for people reading it.
    let first = std::fs::read_to_string(&output).unwrap();
    assert!(first.starts_with("{\"source\":"), "{first}");

    let csv = std::fs::read_to_string(&table).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some(COLUMNS.join(",").as_str()));
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 5, "{csv}");
    for (source, id) in &sources {
        let row = rows
            .iter()
            .find(|r| r.starts_with(&format!("{source},{id},caption,")))
            .unwrap_or_else(|| panic!("no row for {source} in {csv}"));
        // The prompt, quoted as RFC 4180 wants, then the worker's answer.
        assert!(row.contains(",\"Say \"\"hi\"\", briefly\",echo "), "{row}");
        assert!(row.contains(",ok,,,fake-model,"), "{row}");
    }

    // The same table from the output alone.
    let again = root.join("again.csv");
    let out = Command::new(env!("CARGO_BIN_EXE_vargpt-dispatcher"))
        .arg("table")
        .arg("--output")
        .arg(&output)
        .arg("--table")
        .arg(&again)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(std::fs::read_to_string(&again).unwrap(), csv);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_and_names_match_the_workers() {
    let (_dir, root) = tmp();
    let images = root.join("images");
    write_pngs(&images, 1);
    let output = root.join("out.jsonl");

    // 2: usage or configuration, nothing sent.
    let mut bad_prefix = dispatcher_without_queue(&images, &output);
    bad_prefix.args(["--queue-prefix", "not a prefix"]);
    let out = run(bad_prefix).await;
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));

    // An old environment name is still read, with a warning.
    let mut old_env = dispatcher_without_queue(&images, &output);
    old_env.env("VARGPT_DISPATCH_MAX_IN_FLIGHT", "0");
    let out = run(old_env).await;
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("VARGPT_DISPATCH_MAX_IN_FLIGHT is deprecated: set VARGPT_MAX_IN_FLIGHT"),
        "{stderr}"
    );
    assert!(
        stderr.contains("--max-in-flight must be at least 1"),
        "{stderr}"
    );

    // 1: a run-time failure (no broker there).
    let mut no_broker = Command::new(env!("CARGO_BIN_EXE_vargpt-dispatcher"));
    no_broker
        .args(["run", "--no-progress", "--amqp-url"])
        .arg("amqp://guest:guest@127.0.0.1:1/%2f")
        .arg("--input")
        .arg(&images)
        .arg("--output")
        .arg(&output);
    let out = run(no_broker).await;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));

    // The old --queue still works, with a warning.
    let queue = unique_name("legacy-queue");
    let _worker = FakeWorker::start(&amqp_url(), &queue, FakeWorkerOptions::default())
        .await
        .unwrap();
    let out = run(dispatcher(&images, &output, &queue)).await;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--queue / VARGPT_JOB_QUEUE is deprecated"),
        "{stderr}"
    );
}
