//! AMQP content-header payload bytes (class, weight, body size, then the basic
//! properties with their header table) -> amq-protocol's parser, the one lapin
//! runs on every delivery -> the worker's own `meta_of` (compiled from
//! crates/vargpt-worker/src/amqp/headers.rs), which reads
//! `x-vargpt-enqueued-at-ms`, `x-vargpt-attempt`, `x-delivery-count` and
//! `x-acquired-count` as integers of any AMQP encoding.
//!
//! Properties: no panic; the attempt is at least 1; parsed properties
//! serialize again (the worker republishes them on retries and dead letters)
//! and that frame parses back to the same bytes.

#![no_main]

use amq_protocol::frame::parsing::parse_content_header;
use amq_protocol::frame::{gen_frame, parse_frame, AMQPContentHeader, AMQPFrame};
use libfuzzer_sys::fuzz_target;
use vargpt_fuzz::worker_headers::{self as headers, meta_of};

fuzz_target!(|data: &[u8]| {
    let Ok((_, header)) = parse_content_header(data) else {
        return;
    };
    let props = &header.properties;
    let meta = meta_of(props);
    assert!(meta.attempt >= 1);
    for key in [
        headers::DELIVERY_COUNT,
        headers::ATTEMPT,
        headers::ENQUEUED_AT_MS,
    ] {
        let _ = headers::get_u64(props.headers().as_ref(), key);
    }
    // The retry path's copy: our counters dropped, the attempt rewritten.
    let mut copy = headers::without(props.headers().as_ref(), &[headers::DELIVERY_COUNT]);
    headers::set_u64(&mut copy, headers::ATTEMPT, u64::from(meta.attempt) + 1);
    let republished = props.clone().with_headers(copy);

    let first = encode(&header);
    let (rest, frame) = match parse_frame(first.as_slice()) {
        Ok(ok) => ok,
        Err(e) => panic!("a re-encoded content header does not parse: {e:?}"),
    };
    assert!(rest.is_empty());
    let AMQPFrame::Header(_, back) = frame else {
        panic!("re-encoded header parsed as {frame:?}")
    };
    assert_eq!(
        encode(&back),
        first,
        "properties changed through a round trip"
    );
    let _ = encode(&AMQPContentHeader {
        properties: republished,
        ..header
    });
});

fn encode(header: &AMQPContentHeader) -> Vec<u8> {
    let frame = AMQPFrame::Header(1, header.clone());
    match cookie_factory::gen_simple(gen_frame(&frame), Vec::new()) {
        Ok(bytes) => bytes,
        Err(e) => panic!("cannot serialize parsed properties: {e:?}"),
    }
}
