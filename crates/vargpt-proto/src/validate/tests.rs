use super::*;

fn limits() -> Limits {
    Limits {
        max_job_bytes: 4096,
        max_prompt_bytes: 64,
        max_new_tokens: 100,
        max_image_bytes: 16,
        max_image_pixels: 100,
        allowed_buckets: vec!["inputs".into()],
    }
}

fn code_of(body: &str) -> ErrorCode {
    match parse_job(body.as_bytes(), &limits()) {
        Ok(j) => panic!("accepted {body}: {j:?}"),
        Err(r) => r.error.code,
    }
}

#[test]
fn good_jobs_pass() {
    let j = parse_job(
        br#"{"id":"a-1","kind":"vqa","prompt":"what?","image":{"data":"aGVsbG8="},"params":{"seed":"5","topP":0.5},"replyTo":"r","correlationId":"c"}"#,
        &limits(),
    )
    .unwrap();
    assert_eq!(j.kind, JobKind::Vqa);
    assert_eq!(j.image, Some(ImageSource::Inline(b"hello".to_vec())));
    assert_eq!(j.params.seed, Some(5));
    assert_eq!(j.reply_to.as_deref(), Some("r"));
    let j = parse_job(
        br#"{"id":"b","kind":"caption","image":{"uri":"s3://inputs/x/y.png"}}"#,
        &limits(),
    )
    .unwrap();
    assert_eq!(
        j.image,
        Some(ImageSource::S3 {
            bucket: "inputs".into(),
            key: "x/y.png".into()
        })
    );
    assert!(parse_job(
        br#"{"version":1,"id":"c","kind":"generate_image","prompt":"a cat"}"#,
        &limits()
    )
    .is_ok());
    assert!(parse_job(
        br#"{"id":"d","kind":"chat","prompt":"hi","image":{"data":"aGVsbG8"}}"#,
        &limits()
    )
    .is_ok());
    assert!(parse_job(
        br#"{"id":"d","kind":"chat","prompt":"hi","image":{"data":"-_-_"}}"#,
        &limits()
    )
    .is_ok());
}

#[test]
fn every_bad_input_has_its_code() {
    use ErrorCode::*;
    let cases: &[(&str, ErrorCode)] = &[
        ("{not json", MalformedJson),
        ("[1,2]", InvalidSchema),
        (
            r#"{"id":"a","kind":"chat","prompt":"x","temprature":1}"#,
            InvalidSchema,
        ),
        (r#"{"id":5,"kind":"chat","prompt":"x"}"#, InvalidSchema),
        (
            r#"{"version":2,"id":"a","kind":"chat","prompt":"x"}"#,
            UnsupportedVersion,
        ),
        (r#"{"kind":"chat","prompt":"x"}"#, MissingField),
        (r#"{"id":"a","prompt":"x"}"#, MissingField),
        (
            r#"{"id":"a","kind":"vqa","image":{"data":"aGVsbG8="}}"#,
            MissingField,
        ),
        (r#"{"id":"a","kind":"caption"}"#, MissingField),
        (r#"{"id":"a","kind":"paint","prompt":"x"}"#, UnknownKind),
        (r#"{"id":"a","kind":9,"prompt":"x"}"#, UnknownKind),
        (r#"{"id":"../etc","kind":"chat","prompt":"x"}"#, InvalidId),
        (r#"{"id":"a b","kind":"chat","prompt":"x"}"#, InvalidId),
        (
            r#"{"id":"a","kind":"chat","prompt":"x","params":{"temperature":-1}}"#,
            ParamOutOfRange,
        ),
        (
            r#"{"id":"a","kind":"chat","prompt":"x","params":{"topP":1.5}}"#,
            ParamOutOfRange,
        ),
        (
            r#"{"id":"a","kind":"chat","prompt":"x","params":{"maxNewTokens":0}}"#,
            ParamOutOfRange,
        ),
        (
            r#"{"id":"a","kind":"chat","prompt":"x","params":{"maxNewTokens":101}}"#,
            ParamOutOfRange,
        ),
        (
            r#"{"id":"a","kind":"chat","prompt":"x","params":{"cfgScale":-0.5}}"#,
            ParamOutOfRange,
        ),
        (
            r#"{"id":"a","kind":"chat","prompt":"x","params":{"topK":100001}}"#,
            ParamOutOfRange,
        ),
        (
            r#"{"id":"a","kind":"chat","prompt":"x","params":{"imageTopK":0}}"#,
            ParamOutOfRange,
        ),
        (
            r#"{"id":"a","kind":"chat","prompt":"x","params":{"cfgScale":51}}"#,
            ParamOutOfRange,
        ),
        (
            r#"{"id":"a","kind":"generate_image","prompt":"x","image":{"data":"aGVsbG8="}}"#,
            InvalidField,
        ),
        (
            r#"{"id":"a","kind":"caption","image":{"data":"@@@@"}}"#,
            InvalidBase64,
        ),
        (
            r#"{"id":"a","kind":"caption","image":{"data":"aGVsbG8gd29ybGQgaGVsbG8gd29ybGQ="}}"#,
            ImageTooLarge,
        ),
        (
            r#"{"id":"a","kind":"chat","prompt":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#,
            PromptTooLong,
        ),
        (
            r#"{"id":"a","kind":"caption","image":{"uri":"https://evil.example/x.png"}}"#,
            InvalidImageUri,
        ),
        (
            r#"{"id":"a","kind":"caption","image":{"uri":"s3://inputs/../secret"}}"#,
            InvalidImageUri,
        ),
        (
            r#"{"id":"a","kind":"caption","image":{"uri":"s3://other/x.png"}}"#,
            BucketNotAllowed,
        ),
    ];
    for (body, want) in cases {
        assert_eq!(code_of(body), *want, "{body}");
    }
    let huge = format!(
        r#"{{"id":"a","kind":"chat","prompt":"{}"}}"#,
        "x".repeat(5000)
    );
    assert_eq!(code_of(&huge), JobTooLarge);
    assert_eq!(
        parse_job(&[0xff, 0xfe], &limits()).unwrap_err().error.code,
        MalformedJson
    );
}

#[test]
fn rejections_keep_the_ids_they_could_read() {
    let r = parse_job(
        br#"{"id":"job-7","kind":"paint","replyTo":"mine","correlationId":"c9"}"#,
        &limits(),
    )
    .unwrap_err();
    assert_eq!(r.hints.id.as_deref(), Some("job-7"));
    assert_eq!(r.hints.reply_to.as_deref(), Some("mine"));
    assert_eq!(r.hints.correlation_id.as_deref(), Some("c9"));
    assert!(r.error.message.contains("paint"), "{}", r.error.message);
}

#[test]
fn hostile_input_never_makes_a_long_or_control_laden_message() {
    let huge_field = "f".repeat(300_000);
    let bodies = [
        format!(r#"{{"id":"a","kind":"chat","prompt":"p","{huge_field}":1}}"#),
        format!(r#"{{"id":"a","kind":"{huge_field}"}}"#),
        format!(r#"{{"id":"a","kind":"chat","prompt":"p","params":{{"{huge_field}\n":1}}}}"#),
        format!(r#"{{"id":"{huge_field}","kind":"chat","prompt":"p"}}"#),
        format!(r#"{{"version":{},"id":"a"}}"#, "9".repeat(100_000)),
        "{\"id\":\"a\u{1b}[2J\",\"kind\":\"chat\",\"prompt\":\"p\"}".to_string(),
    ];
    let big = Limits {
        max_job_bytes: 1 << 20,
        ..limits()
    };
    for body in &bodies {
        let r = parse_job(body.as_bytes(), &big).unwrap_err();
        let m = &r.error.message;
        assert!(m.len() <= crate::bounded::MAX_MESSAGE_BYTES, "{}", m.len());
        assert!(!m.chars().any(char::is_control), "{m:?}");
        // Hints echo only valid ids and short inert strings.
        if let Some(id) = &r.hints.id {
            assert!(check_id(id).is_ok(), "{id:?}");
        }
    }
    let r = parse_job(
        br#"{"id":"a","kind":"chat","prompt":"p","replyTo":"q\nx"}"#,
        &big,
    )
    .unwrap_err();
    assert_eq!(r.error.code, ErrorCode::InvalidField);
}
