//! Real model, default limits: a hostile client's bodies, headers and
//! properties interleaved with good jobs. Every bad message gets its
//! documented error code in one bounded, inert result and (deadlines aside)
//! goes to the dead-letter queue; hostile metadata on a good body changes
//! nothing; every good job ends ok; nothing is answered twice (no crash
//! here, so no duplicate is allowed); the worker never loses its broker
//! connection.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use lapin::BasicProperties;
use serde_json::json;
use vargpt_integration_tests::broker::Received;
use vargpt_integration_tests::http::metric;
use vargpt_integration_tests::worker::Worker;
use vargpt_proto::{JobResult, ResultStatus};

use crate::common::*;

/// What a case must end in.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Want {
    Ok,
    /// An error result with this code, dead-lettered.
    Dead(&'static str),
    /// An error result with this code, acked without a dead letter.
    Answered(&'static str),
}

struct Case {
    name: String,
    body: Vec<u8>,
    props: BasicProperties,
    want: Want,
    /// Where the result goes.
    route: Route,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Route {
    Reply,
    /// The reply queue does not exist, or is a broker-reserved `amq.*`
    /// address (a forged direct reply-to one crashes RabbitMQ 3.10's channel
    /// and with it the publisher's connection): the results exchange instead.
    Results,
}

fn props(name: &str, reply_to: &str) -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_reply_to(ShortString::from(reply_to))
        .with_correlation_id(ShortString::from(name))
}

fn headers(pairs: Vec<(&str, AMQPValue)>) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert(ShortString::from(k), v);
    }
    t
}

/// A PNG signature, a valid IHDR chunk claiming `w`×`h` and an empty IDAT:
/// a decompression bomb's header.
fn png_header(w: u32, h: u32) -> Vec<u8> {
    let mut chunk = b"IHDR".to_vec();
    chunk.extend_from_slice(&w.to_be_bytes());
    chunk.extend_from_slice(&h.to_be_bytes());
    chunk.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut v = b"\x89PNG\r\n\x1a\n\0\0\0\x0d".to_vec();
    v.extend_from_slice(&chunk);
    v.extend_from_slice(&crc32(&chunk).to_be_bytes());
    // An empty IDAT, so a header reader reaches the image data.
    v.extend_from_slice(&[0, 0, 0, 0]);
    v.extend_from_slice(b"IDAT");
    v.extend_from_slice(&crc32(b"IDAT").to_be_bytes());
    v
}

/// The PNG chunk CRC (CRC-32, reflected, polynomial 0xEDB88320).
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Bad bodies: (name, body, code).
fn bad_bodies(img: &str) -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let j = |v: serde_json::Value| body(&v);
    let chat = |extra: serde_json::Value| {
        let mut v = json!({"id": "h", "kind": "chat", "prompt": "hi"});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        body(&v)
    };
    let params = |p: serde_json::Value| chat(json!({ "params": p }));
    let truncated_png = {
        let mut p = png(32, 32);
        p.truncate(60);
        p
    };
    let gif = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;".to_vec();
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes();
    vec![
        ("empty", vec![], "malformed_json"),
        ("whitespace", b"   \n\t ".to_vec(), "malformed_json"),
        (
            "not-utf8",
            vec![0xff, 0xfe, 0x7b, 0x00, 0xc3],
            "malformed_json",
        ),
        (
            "bom",
            b"\xef\xbb\xbf{\"id\":\"h\",\"kind\":\"chat\",\"prompt\":\"hi\"}".to_vec(),
            "malformed_json",
        ),
        (
            "truncated",
            br#"{"id":"h","kind":"ch"#.to_vec(),
            "malformed_json",
        ),
        ("deep-nesting", deep, "malformed_json"),
        (
            "number-overflow",
            br#"{"id":"h","kind":"chat","prompt":"hi","params":{"temperature":1e999}}"#.to_vec(),
            "malformed_json",
        ),
        ("null", b"null".to_vec(), "invalid_schema"),
        ("string", b"\"a job\"".to_vec(), "invalid_schema"),
        ("number", b"42".to_vec(), "invalid_schema"),
        (
            "huge-unknown-field",
            chat(json!({ "f".repeat(300_000): 1 })),
            "invalid_schema",
        ),
        (
            "control-unknown-field",
            chat(json!({ "evil\n\u{1b}[2Jfield\r": 1 })),
            "invalid_schema",
        ),
        (
            "prompt-number",
            chat(json!({"prompt": 42})),
            "invalid_schema",
        ),
        (
            "top-k-negative",
            params(json!({"topK": -1})),
            "invalid_schema",
        ),
        (
            "seed-not-number",
            params(json!({"seed": "abc"})),
            "invalid_schema",
        ),
        (
            "seed-overflow",
            params(json!({"seed": "18446744073709551616"})),
            "invalid_schema",
        ),
        (
            "deadline-garbage",
            chat(json!({"deadline": "yesterday"})),
            "invalid_schema",
        ),
        (
            "version-7",
            chat(json!({"version": 7})),
            "unsupported_version",
        ),
        (
            "version-string",
            chat(json!({"version": "1"})),
            "unsupported_version",
        ),
        (
            "version-negative",
            chat(json!({"version": -1})),
            "unsupported_version",
        ),
        (
            "no-id",
            j(json!({"kind": "chat", "prompt": "hi"})),
            "missing_field",
        ),
        (
            "no-kind",
            j(json!({"id": "h", "prompt": "hi"})),
            "missing_field",
        ),
        (
            "vqa-no-image",
            j(json!({"id": "h", "kind": "vqa", "prompt": "what?"})),
            "missing_field",
        ),
        (
            "vqa-empty-prompt",
            j(json!({"id": "h", "kind": "vqa", "prompt": "  ", "image": {"data": img}})),
            "missing_field",
        ),
        (
            "caption-no-image",
            j(json!({"id": "h", "kind": "caption"})),
            "missing_field",
        ),
        (
            "empty-image-data",
            j(json!({"id": "h", "kind": "caption", "image": {"data": ""}})),
            "missing_field",
        ),
        (
            "kind-unknown",
            chat(json!({"kind": "paint"})),
            "unknown_kind",
        ),
        ("kind-number", chat(json!({"kind": 99})), "unknown_kind"),
        (
            "kind-object",
            chat(json!({"kind": {"a": 1}})),
            "unknown_kind",
        ),
        ("id-newline", chat(json!({"id": "a\nb"})), "invalid_id"),
        (
            "id-path",
            chat(json!({"id": "../../etc/passwd"})),
            "invalid_id",
        ),
        (
            "id-long",
            chat(json!({"id": "a".repeat(129)})),
            "invalid_id",
        ),
        ("id-unicode", chat(json!({"id": "j\u{f6}b"})), "invalid_id"),
        ("id-dot", chat(json!({"id": ".hidden"})), "invalid_id"),
        (
            "temperature-zero",
            params(json!({"temperature": 0.0})),
            "param_out_of_range",
        ),
        ("top-p", params(json!({"topP": 1.5})), "param_out_of_range"),
        (
            "max-new-tokens-0",
            params(json!({"maxNewTokens": 0})),
            "param_out_of_range",
        ),
        (
            "max-new-tokens-huge",
            params(json!({"maxNewTokens": 1_000_000})),
            "param_out_of_range",
        ),
        (
            "cfg-scale",
            params(json!({"cfgScale": 51.0})),
            "param_out_of_range",
        ),
        (
            "image-top-k-0",
            params(json!({"imageTopK": 0})),
            "param_out_of_range",
        ),
        (
            "repetition-penalty",
            params(json!({"repetitionPenalty": 11.0})),
            "param_out_of_range",
        ),
        (
            "reply-to-control",
            chat(json!({"replyTo": "q\r\nx"})),
            "invalid_field",
        ),
        (
            "reply-to-long",
            chat(json!({"replyTo": "q".repeat(300)})),
            "invalid_field",
        ),
        (
            "correlation-long",
            chat(json!({"correlationId": "c".repeat(300)})),
            "invalid_field",
        ),
        (
            "generate-with-image",
            j(json!({"id": "h", "kind": "generate_image", "prompt": "x", "image": {"data": img}})),
            "invalid_field",
        ),
        (
            "base64",
            j(json!({"id": "h", "kind": "caption", "image": {"data": "!!!not base64!!!"}})),
            "invalid_base64",
        ),
        (
            "gif",
            j(json!({"id": "h", "kind": "caption", "image": {"data": b64(&gif)}})),
            "invalid_image",
        ),
        (
            "truncated-png",
            j(json!({"id": "h", "kind": "caption", "image": {"data": b64(&truncated_png)}})),
            "invalid_image",
        ),
        (
            "png-bomb",
            j(
                json!({"id": "h", "kind": "caption", "image": {"data": b64(&png_header(100_000, 100_000))}}),
            ),
            "image_too_large",
        ),
        (
            "prompt-bytes",
            chat(json!({"prompt": "x".repeat(20_000)})),
            "prompt_too_long",
        ),
        (
            "uri-scheme",
            j(json!({"id": "h", "kind": "caption", "image": {"uri": "file:///etc/passwd"}})),
            "invalid_image_uri",
        ),
        (
            "uri-traversal",
            j(
                json!({"id": "h", "kind": "caption", "image": {"uri": format!("s3://{BUCKET}/../secret")}}),
            ),
            "invalid_image_uri",
        ),
        (
            "uri-nul",
            j(
                json!({"id": "h", "kind": "caption", "image": {"uri": format!("s3://{BUCKET}/a\u{0}b")}}),
            ),
            "invalid_image_uri",
        ),
        (
            "uri-bucket",
            j(
                json!({"id": "h", "kind": "caption", "image": {"uri": "s3://someone-elses-bucket/cat.png"}}),
            ),
            "bucket_not_allowed",
        ),
        (
            "uri-missing",
            j(
                json!({"id": "h", "kind": "caption", "image": {"uri": format!("s3://{BUCKET}/nope.png")}}),
            ),
            "image_not_found",
        ),
    ]
}

/// Good bodies, each with a hostile header or property: (name, headers, results-exchange?).
fn hostile_metadata() -> Vec<(&'static str, Option<FieldTable>, Route)> {
    let big = LongString::from("x".repeat(120_000));
    let mut nested = FieldTable::default();
    nested.insert(
        "deeper".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::Void; 100])),
    );
    vec![
        (
            "forged-delivery-count",
            Some(headers(vec![(
                "x-delivery-count",
                AMQPValue::LongLongInt(1000),
            )])),
            Route::Reply,
        ),
        (
            "forged-attempt",
            Some(headers(vec![(
                "x-vargpt-attempt",
                AMQPValue::LongString("999999999999".into()),
            )])),
            Route::Reply,
        ),
        (
            "enqueued-at-max",
            Some(headers(vec![(
                "x-vargpt-enqueued-at-ms",
                AMQPValue::LongLongInt(i64::MAX),
            )])),
            Route::Reply,
        ),
        (
            "enqueued-at-negative",
            Some(headers(vec![(
                "x-vargpt-enqueued-at-ms",
                AMQPValue::LongLongInt(-5),
            )])),
            Route::Reply,
        ),
        (
            "legacy-enqueued-at",
            Some(headers(vec![(
                "x-enqueued-at-ms",
                AMQPValue::LongString("not a number".into()),
            )])),
            Route::Reply,
        ),
        (
            "forged-error-code",
            Some(headers(vec![(
                "x-vargpt-error-code",
                AMQPValue::LongString("internal".into()),
            )])),
            Route::Reply,
        ),
        (
            "huge-header",
            Some(headers(vec![("junk", AMQPValue::LongString(big))])),
            Route::Reply,
        ),
        (
            "nested-headers",
            Some(headers(vec![("t", AMQPValue::FieldTable(nested))])),
            Route::Reply,
        ),
        ("reply-to-missing-queue", None, Route::Results),
        ("reply-to-direct-reply", None, Route::Results),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_client_touches_no_other_job() {
    let env = TestEnv::new("hostile").await;
    let mut worker = Worker::spawn(&env.worker_config(), &format!("{}-w", env.prefix)).unwrap();
    worker.wait_ready(READY_TIMEOUT).await.unwrap();
    let replies = env.broker.reply_queue("replies").await.unwrap();
    let img = b64(&test_image_bytes());

    let mut cases = Vec::new();
    let good = |i: usize| match i % 4 {
        0 => {
            json!({"id": format!("good-{i}"), "kind": "caption", "image": {"data": img}, "params": {"maxNewTokens": 6}})
        }
        1 => {
            json!({"id": format!("good-{i}"), "kind": "vqa", "prompt": "What is it?", "image": {"data": img}, "params": {"maxNewTokens": 6}})
        }
        2 => chat(&format!("good-{i}"), "Hello there"),
        _ => generate(&format!("good-{i}"), "a small house"),
    };
    let mut n_good = 0;
    for (k, (name, b, code)) in bad_bodies(&img).into_iter().enumerate() {
        cases.push(Case {
            name: name.to_string(),
            body: b,
            props: props(name, &replies),
            want: Want::Dead(code),
            route: Route::Reply,
        });
        if k % 5 == 0 {
            let name = format!("good-{n_good}");
            cases.push(Case {
                body: body(&good(n_good)),
                props: props(&name, &replies),
                name,
                want: Want::Ok,
                route: Route::Reply,
            });
            n_good += 1;
        }
    }
    // Duplicate keys: the last one wins, everywhere the worker reads the body.
    cases.push(Case {
        name: "duplicate-key".into(),
        body: br#"{"id":"h","id":"dup-last","kind":"chat","prompt":"hi"}"#.to_vec(),
        props: props("duplicate-key", &replies),
        want: Want::Ok,
        route: Route::Reply,
    });
    cases.push(Case {
        name: "deadline-past".into(),
        body: body(&json!({"id": "late", "kind": "chat", "prompt": "hi", "deadline": "2001-01-01T00:00:00Z"})),
        props: props("deadline-past", &replies),
        want: Want::Answered("deadline_exceeded"),
        route: Route::Reply,
    });
    // A bad body behind a header table near the frame limit: its dead letter
    // must still fit (the client's headers are dropped, not the connection).
    cases.push(Case {
        name: "bad-with-huge-header".into(),
        body: body(&json!({"id": "h", "kind": "chat", "prompt": "hi", "f".repeat(50_000): 1})),
        props: props("bad-with-huge-header", &replies).with_headers(headers(vec![(
            "junk",
            AMQPValue::LongString(LongString::from("y".repeat(120_000))),
        )])),
        want: Want::Dead("invalid_schema"),
        route: Route::Reply,
    });
    for (name, h, route) in hostile_metadata() {
        let id = format!("meta-{name}");
        let reply_to = match name {
            "reply-to-missing-queue" => format!("{}.no-such-queue", env.prefix),
            // The bare pseudo-queue is refused by the broker at publish; a
            // forged direct-reply address is not, and would crash the
            // broker's channel if the worker published to it.
            "reply-to-direct-reply" => "amq.rabbitmq.reply-to.Zm9yZ2Vk.bm90aGluZw==".to_string(),
            _ => replies.clone(),
        };
        let mut p = props(name, &reply_to)
            .with_message_id(ShortString::from("m".repeat(255)))
            .with_timestamp(u64::MAX)
            .with_content_type("text/plain".into())
            .with_priority(255);
        if let Some(h) = h {
            p = p.with_headers(h);
        }
        cases.push(Case {
            name: name.to_string(),
            body: body(&chat(&id, "Hello from a hostile client")),
            props: p,
            want: Want::Ok,
            route,
        });
    }
    assert!(cases.len() >= 60, "{} cases", cases.len());

    for c in &cases {
        env.broker
            .publish_props(&c.body, c.props.clone())
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", c.name));
    }

    // Collect from the reply queue and the results queue until every case
    // has an answer, and a little longer to catch duplicates.
    let mut got: HashMap<String, Vec<(bool, JobResult)>> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut settle_until: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if now > deadline || settle_until.is_some_and(|t| now > t) {
            break;
        }
        for q in [replies.clone(), env.broker.results_queue()] {
            let msgs: Vec<Received> = env
                .broker
                .collect(&q, 200, Duration::from_millis(700))
                .await
                .unwrap();
            for m in msgs {
                let cid = m
                    .properties
                    .correlation_id()
                    .as_ref()
                    .map(|c| c.as_str().to_string())
                    .unwrap_or_default();
                got.entry(cid).or_default().push((q != replies, m.result()));
            }
        }
        if settle_until.is_none() && cases.iter().all(|c| got.contains_key(&c.name)) {
            settle_until = Some(Instant::now() + Duration::from_secs(3));
        }
    }
    let missing: Vec<&str> = cases
        .iter()
        .filter(|c| !got.contains_key(&c.name))
        .map(|c| c.name.as_str())
        .collect();
    assert!(
        missing.is_empty(),
        "no answer for {missing:?}\nlogs:\n{}",
        worker.logs()
    );

    let mut dead_expected = 0;
    for c in &cases {
        let rs = &got[&c.name];
        assert_eq!(
            rs.len(),
            1,
            "{}: answered {} times: {rs:#?}",
            c.name,
            rs.len()
        );
        let (via_results, r) = &rs[0];
        assert_eq!(
            *via_results,
            c.route == Route::Results,
            "{}: answered on the results exchange: {via_results}",
            c.name
        );
        match c.want {
            Want::Ok => {
                assert_eq!(r.status, ResultStatus::Ok, "{}: {r:#?}", c.name);
                if c.name == "duplicate-key" {
                    assert_eq!(r.job_id, "dup-last");
                }
            }
            Want::Dead(code) | Want::Answered(code) => {
                assert_eq!(r.status, ResultStatus::Error, "{}: {r:#?}", c.name);
                let e = r.error.as_ref().unwrap();
                assert_eq!(e.code.as_str(), code, "{}: {e:?}", c.name);
                assert!(
                    e.message.len() <= vargpt_proto::bounded::MAX_MESSAGE_BYTES,
                    "{}: {} bytes",
                    c.name,
                    e.message.len()
                );
                assert!(
                    !e.message.chars().any(char::is_control),
                    "{}: {:?}",
                    c.name,
                    e.message
                );
                if matches!(c.want, Want::Dead(_)) {
                    dead_expected += 1;
                }
            }
        }
        assert!(r.job_id.len() <= vargpt_proto::JOB_ID_MAX_LEN, "{}", c.name);
    }

    // The dead-letter queue holds exactly the dead cases, each annotated with
    // bounded headers and the original body.
    let dead = env
        .broker
        .collect(
            &env.broker.dead_queue(),
            dead_expected + 10,
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(dead.len(), dead_expected, "dead letters");
    for d in &dead {
        let cid = d
            .properties
            .correlation_id()
            .as_ref()
            .unwrap()
            .as_str()
            .to_string();
        let c = cases.iter().find(|c| c.name == cid).unwrap();
        assert_eq!(
            d.body, c.body,
            "{cid}: the dead letter keeps the original body"
        );
        let Want::Dead(code) = c.want else {
            panic!("{cid} should not be dead-lettered")
        };
        assert_eq!(
            d.header_str("x-vargpt-error-code").as_deref(),
            Some(code),
            "{cid}"
        );
        let msg = d.header_str("x-vargpt-error-message").unwrap_or_default();
        assert!(
            !msg.is_empty() && msg.len() <= vargpt_proto::bounded::MAX_MESSAGE_BYTES,
            "{cid}"
        );
    }

    // Never lost its connection (one "connected" line), never crashed.
    assert!(worker.try_wait().is_none(), "the worker survived");
    let logs = worker.logs();
    assert_eq!(
        logs.matches("connected and consuming").count(),
        1,
        "reconnected:\n{logs}"
    );
    let m = worker.metrics().await;
    // Every chat case ended exactly once.
    let ended = metric(&m, "vargpt_jobs_total{kind=\"chat\",status=\"ok\"}").unwrap_or(0.0);
    let chats_ok = cases
        .iter()
        .filter(|c| c.want == Want::Ok && String::from_utf8_lossy(&c.body).contains("\"chat\""))
        .count();
    assert_eq!(ended as usize, chats_ok, "chat jobs ended ok");
    assert_eq!(
        metric(&m, "vargpt_jobs_quarantined_total"),
        Some(1.0),
        "only the forged delivery count is moved"
    );
    env.cleanup(&mut [&mut worker]).await;
}
