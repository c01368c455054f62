//! The `.proto` file and the Rust types must agree: same messages, same field
//! names and numbers, same enum values, and serde must write exactly the
//! proto3 JSON names (and read the snake_case ones). A small parser of the
//! proto subset we use keeps this test dependency-free.

use std::collections::BTreeMap;

use serde_json::{json, Value};
use vargpt_proto::json::Timestamp;
use vargpt_proto::schema::{json_name, ProtoEnum, ProtoMessage};
use vargpt_proto::*;

const PROTO: &str = include_str!("../../../proto/vargpt/v1/jobs.proto");

#[derive(Debug, Default)]
struct Schema {
    messages: BTreeMap<String, Vec<(String, u32)>>,
    enums: BTreeMap<String, Vec<(String, i32)>>,
}

fn strip_comments(src: &str) -> String {
    let mut out = String::new();
    let mut rest = src;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("//") {
            rest = r.find('\n').map_or("", |i| &r[i..]);
        } else if let Some(r) = rest.strip_prefix("/*") {
            rest = r.find("*/").map_or("", |i| &r[i + 2..]);
        } else {
            let c = rest.chars().next().unwrap();
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

fn tokens(src: &str) -> Vec<String> {
    let mut toks = Vec::new();
    let mut cur = String::new();
    for c in strip_comments(src).chars() {
        if c.is_whitespace() || "{};=".contains(c) {
            if !cur.is_empty() {
                toks.push(std::mem::take(&mut cur));
            }
            if !c.is_whitespace() {
                toks.push(c.to_string());
            }
        } else {
            cur.push(c);
        }
    }
    toks
}

/// Parses `message` / `enum` / `oneof` blocks and `[label] type name = N;` fields.
fn parse(src: &str) -> Schema {
    let toks = tokens(src);
    let mut schema = Schema::default();
    let mut i = 0;
    while i < toks.len() {
        match toks[i].as_str() {
            "message" => {
                let name = toks[i + 1].clone();
                assert_eq!(toks[i + 2], "{");
                i += 3;
                let mut fields = Vec::new();
                let mut depth = 1;
                while depth > 0 {
                    match toks[i].as_str() {
                        "}" => {
                            depth -= 1;
                            i += 1;
                        }
                        "oneof" => {
                            assert_eq!(toks[i + 2], "{");
                            depth += 1;
                            i += 3;
                        }
                        _ => {
                            // [optional|repeated] type name = number ;
                            let eq = (i..).find(|&j| toks[j] == "=").unwrap();
                            let field = toks[eq - 1].clone();
                            let number: u32 = toks[eq + 1].parse().unwrap();
                            assert_eq!(toks[eq + 2], ";", "field {field} of {name}");
                            fields.push((field, number));
                            i = eq + 3;
                        }
                    }
                }
                schema.messages.insert(name, fields);
            }
            "enum" => {
                let name = toks[i + 1].clone();
                assert_eq!(toks[i + 2], "{");
                i += 3;
                let mut values = Vec::new();
                while toks[i] != "}" {
                    assert_eq!(toks[i + 1], "=", "enum {name}");
                    values.push((toks[i].clone(), toks[i + 2].parse().unwrap()));
                    assert_eq!(toks[i + 3], ";");
                    i += 4;
                }
                schema.enums.insert(name, values);
                i += 1;
            }
            _ => i += 1,
        }
    }
    schema
}

fn check_message<M: ProtoMessage>(schema: &Schema) {
    let proto = schema
        .messages
        .get(M::PROTO_NAME)
        .unwrap_or_else(|| panic!("message {} is not in jobs.proto", M::PROTO_NAME));
    let rust: Vec<(String, u32)> = M::FIELDS.iter().map(|(n, k)| (n.to_string(), *k)).collect();
    assert_eq!(
        &rust,
        proto,
        "fields of {} differ between Rust and jobs.proto",
        M::PROTO_NAME
    );
}

fn check_enum<E: ProtoEnum>(schema: &Schema) {
    let proto = schema
        .enums
        .get(E::PROTO_NAME)
        .unwrap_or_else(|| panic!("enum {} is not in jobs.proto", E::PROTO_NAME));
    let rust: Vec<(String, i32)> = E::values()
        .into_iter()
        .map(|(n, k)| (n.to_string(), k))
        .collect();
    assert_eq!(
        &rust,
        proto,
        "values of {} differ between Rust and jobs.proto",
        E::PROTO_NAME
    );
}

/// Serializes a value with every field set and checks the JSON keys are the
/// lowerCamelCase proto names; then renames them to snake_case and checks
/// serde reads them back to the same value.
fn check_json<M>(full: &M)
where
    M: ProtoMessage + serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let v = serde_json::to_value(full).unwrap();
    let obj = v.as_object().unwrap();
    let keys: Vec<&String> = obj.keys().collect();
    let mut want: Vec<String> = M::FIELDS.iter().map(|(n, _)| json_name(n)).collect();
    want.sort();
    let mut got: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    got.sort();
    assert_eq!(got, want, "JSON keys of {}", M::PROTO_NAME);

    let snake: serde_json::Map<String, Value> = M::FIELDS
        .iter()
        .map(|(n, _)| (n.to_string(), obj[&json_name(n)].clone()))
        .collect();
    let back: M = serde_json::from_value(Value::Object(snake)).unwrap();
    assert_eq!(&back, full, "{} read from snake_case names", M::PROTO_NAME);
}

fn full_params() -> SamplingParams {
    SamplingParams {
        max_new_tokens: Some(1),
        greedy: Some(false),
        temperature: Some(0.5),
        top_k: Some(2),
        top_p: Some(0.5),
        repetition_penalty: Some(1.1),
        seed: Some(3),
        cfg_scale: Some(1.5),
        image_top_k: Some(4),
        image_top_p: Some(0.9),
        allow_image: Some(true),
    }
}

fn full_result() -> JobResult {
    JobResult {
        version: 1,
        job_id: "j".into(),
        status: ResultStatus::Ok,
        kind: JobKind::Chat,
        text: "t".into(),
        image: Some(ImageLocation {
            bucket: "b".into(),
            key: "k".into(),
            url: "s3://b/k".into(),
            width: 1,
            height: 2,
            sha256: "00".into(),
        }),
        timings: Timings {
            queue_wait_seconds: 1.0,
            preprocess_seconds: 2.0,
            inference_seconds: 3.0,
            upload_seconds: 4.0,
            total_seconds: 5.0,
        },
        model_id: "m".into(),
        worker_id: "w".into(),
        error: Some(ErrorInfo {
            code: ErrorCode::Internal,
            message: "x".into(),
            retryable: true,
        }),
        correlation_id: "c".into(),
        attempt: 2,
        finish_reason: "eos".into(),
        tokens_generated: 7,
        provenance: Some(Provenance {
            model_id: "m".into(),
            model_revision: "r".into(),
            dtype: "bf16".into(),
            device: "cuda:0".into(),
            tensor_parallel: 2,
            worker_version: "0.1.0+abc".into(),
            seed: 3,
            params: full_params(),
        }),
    }
}

#[test]
fn every_proto_message_and_enum_has_a_rust_twin() {
    let schema = parse(PROTO);
    let messages: Vec<&str> = schema.messages.keys().map(String::as_str).collect();
    let mut rust_messages = vec![
        Job::PROTO_NAME,
        ImageInput::PROTO_NAME,
        SamplingParams::PROTO_NAME,
        JobResult::PROTO_NAME,
        ImageLocation::PROTO_NAME,
        Timings::PROTO_NAME,
        ErrorInfo::PROTO_NAME,
        Provenance::PROTO_NAME,
    ];
    rust_messages.sort();
    assert_eq!(messages, rust_messages);
    let enums: Vec<&str> = schema.enums.keys().map(String::as_str).collect();
    let mut rust_enums = vec![
        JobKind::PROTO_NAME,
        ResultStatus::PROTO_NAME,
        ErrorCode::PROTO_NAME,
    ];
    rust_enums.sort();
    assert_eq!(enums, rust_enums);
}

#[test]
fn field_names_and_numbers_agree() {
    let schema = parse(PROTO);
    check_message::<Job>(&schema);
    check_message::<ImageInput>(&schema);
    check_message::<SamplingParams>(&schema);
    check_message::<JobResult>(&schema);
    check_message::<ImageLocation>(&schema);
    check_message::<Timings>(&schema);
    check_message::<ErrorInfo>(&schema);
    check_message::<Provenance>(&schema);
    check_enum::<JobKind>(&schema);
    check_enum::<ResultStatus>(&schema);
    check_enum::<ErrorCode>(&schema);
}

#[test]
fn serde_writes_proto3_json_names() {
    check_json(&Job {
        version: 1,
        id: "j".into(),
        kind: JobKind::Vqa,
        prompt: "p".into(),
        image: Some(ImageInput::Uri("s3://b/k".into())),
        params: Some(full_params()),
        reply_to: "r".into(),
        correlation_id: "c".into(),
        deadline: Some(Timestamp::parse("2030-01-01T00:00:00Z").unwrap()),
    });
    check_json(&full_params());
    check_json(&full_result());
    check_json(full_result().image.as_ref().unwrap());
    check_json(&full_result().timings);
    check_json(full_result().error.as_ref().unwrap());
    check_json(full_result().provenance.as_ref().unwrap());

    // The oneof: each member is written under its own proto name.
    let names: Vec<String> = ImageInput::FIELDS
        .iter()
        .map(|(n, _)| json_name(n))
        .collect();
    assert_eq!(
        serde_json::to_value(ImageInput::Data("QQ==".into())).unwrap(),
        json!({ names[0].as_str(): "QQ==" })
    );
    assert_eq!(
        serde_json::to_value(ImageInput::Uri("s3://b/k".into())).unwrap(),
        json!({ names[1].as_str(): "s3://b/k" })
    );
}
