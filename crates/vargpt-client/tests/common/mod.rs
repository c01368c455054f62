//! Helpers of the client's integration tests.

pub mod proxy;

use vargpt_client::proto::{ImageInput, Job, JobKind};

pub fn amqp_url() -> String {
    std::env::var("VARGPT_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

pub fn caption(id: &str, prompt: &str) -> Job {
    Job {
        id: id.into(),
        kind: JobKind::Caption,
        prompt: prompt.into(),
        image: Some(ImageInput::Data("iVBORw0KGgo=".into())),
        ..Default::default()
    }
}
