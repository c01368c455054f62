//! Messages → dispositions: parse and validate, fetch the input image, run
//! the backend on the whole batch, store generated images, build results.

use std::sync::Arc;
use std::time::Instant;

use futures::future::join_all;
use sha2::{Digest, Sha256};
use tracing::{info, warn, Instrument};
use vargpt_engine::{Request, Response};
use vargpt_proto::{
    parse_job, ErrorCode, ImageLocation, JobHints, JobKind, JobResult, Limits, ResultStatus,
    Timings, ValidJob, SCHEMA_VERSION,
};

use super::job_request::{
    engine_params, finish_reason, image_key, panic_failure, prompt_of, queue_wait, take_request,
    task_of,
};
use super::preprocess::load_image;
use super::{kind_label, Disposition, Envelope, ImageStore, Route};
use crate::backend::Backend;
use crate::failure::{upload_failure, Failure};
use crate::metrics::Metrics;

/// Settings of the pipeline, validated once at start-up.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub limits: Limits,
    pub worker_id: String,
    /// Generated images go to `{image_prefix}{job id}.png`.
    pub image_prefix: String,
    /// Attempts for transient failures, the first included (>= 1).
    pub max_attempts: u32,
    /// A message already delivered this many times without being settled is
    /// answered with `worker_crashed` instead of being run again (0: never).
    /// With `isolate_suspects` only deliveries from the suspect queue count.
    pub max_deliveries: u32,
    /// The transport has a suspect queue: a message delivered again after a
    /// worker died is moved there and run alone, so that only the job that
    /// kills workers is blamed, never the neighbours that shared its batch
    /// or prefetch.
    pub isolate_suspects: bool,
    /// Also dead-letter jobs whose deadline passed before they ran (by
    /// default they get their `deadline_exceeded` result and are acked: a
    /// client's time-out is not a poison message).
    pub dead_letter_expired: bool,
}

pub struct Pipeline {
    backend: Arc<dyn Backend>,
    store: Arc<dyn ImageStore>,
    metrics: Arc<Metrics>,
    cfg: PipelineConfig,
}

/// A job ready for the backend.
struct Prepared {
    job: ValidJob,
    request: Request,
    timings: Timings,
}

/// What is known about a job when it fails: enough to address its result.
#[derive(Default)]
struct Known {
    id: String,
    kind: JobKind,
    route: Route,
    /// Set once the job reached the engine: its provenance is then whole
    /// (seed and effective params), not only the worker's and model's part.
    provenance: Option<vargpt_proto::Provenance>,
}

impl Pipeline {
    pub fn new(
        backend: Arc<dyn Backend>,
        store: Arc<dyn ImageStore>,
        metrics: Arc<Metrics>,
        cfg: PipelineConfig,
    ) -> Self {
        Pipeline {
            backend,
            store,
            metrics,
            cfg,
        }
    }

    pub fn config(&self) -> &PipelineConfig {
        &self.cfg
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// False once the backend died: take no more jobs.
    pub fn backend_alive(&self) -> bool {
        self.backend.is_alive()
    }

    /// Processes a batch; answer `i` belongs to message `i`. Never panics on
    /// any input, and a panic inside the backend becomes an error result.
    pub async fn process_batch(&self, envs: &[&Envelope]) -> Vec<Disposition> {
        let prepared = join_all(envs.iter().map(|env| async {
            if self.is_suspect(env) {
                return None;
            }
            Some(self.prepare(env).instrument(env.span.clone()).await)
        }))
        .await;
        let mut out: Vec<Option<Disposition>> = Vec::with_capacity(envs.len());
        let mut ready = Vec::new();
        for (i, p) in prepared.into_iter().enumerate() {
            match p {
                None => {
                    self.metrics.quarantined_total.inc();
                    warn!(parent: &envs[i].span, deliveries = envs[i].meta.previous_deliveries,
                        "in flight when a worker died: moving it to the suspect queue to run alone");
                    out.push(Some(Disposition::Quarantine));
                }
                Some(Ok(p)) => {
                    ready.push((i, p));
                    out.push(None);
                }
                Some(Err((known, failure, timings))) => {
                    out.push(Some(self.fail(envs[i], known, failure, timings)))
                }
            }
        }
        if !ready.is_empty() {
            let requests: Vec<Request> = ready
                .iter_mut()
                .map(|(_, p)| take_request(&mut p.request))
                .collect();
            let started = Instant::now();
            let responses = self.infer(requests).await;
            let inference_s = started.elapsed().as_secs_f64();
            if !self.backend.is_alive() {
                // The engine died under these jobs: not their fault, and no
                // answer from it can be trusted. Give them back for a healthy
                // worker (as suspects, so a culprit is still found alone).
                warn!(
                    jobs = ready.len(),
                    "the engine died; giving the batch back to the queue"
                );
                for (i, _) in ready {
                    out[i] = Some(Disposition::Release);
                }
                return out
                    .into_iter()
                    .map(|d| d.expect("every message has a disposition"))
                    .collect();
            }
            let finished = join_all(ready.into_iter().zip(responses).map(|((i, mut p), resp)| {
                p.timings.inference_seconds = inference_s;
                let env = envs[i];
                async move { (i, self.finish(env, p, resp).await) }.instrument(env.span.clone())
            }))
            .await;
            for (i, d) in finished {
                out[i] = Some(d);
            }
        }
        out.into_iter()
            .map(|d| d.expect("every message has a disposition"))
            .collect()
    }

    /// Delivered before without being settled, and not yet run alone.
    fn is_suspect(&self, env: &Envelope) -> bool {
        self.cfg.isolate_suspects && !env.meta.isolated && env.meta.previous_deliveries > 0
    }

    /// Parse, validate, guard against poison and late jobs, fetch the image.
    async fn prepare(&self, env: &Envelope) -> Result<Prepared, (Known, Failure, Timings)> {
        let started = Instant::now();
        let mut timings = Timings {
            queue_wait_seconds: queue_wait(env),
            ..Default::default()
        };
        let job = match parse_job(&env.body, &self.cfg.limits) {
            Ok(job) => job,
            Err(rejected) => {
                let known = self.known_from_hints(env, &rejected.hints);
                env.span.record("job_id", known.id.as_str());
                timings.preprocess_seconds = started.elapsed().as_secs_f64();
                return Err((known, rejected.error.into(), timings));
            }
        };
        env.span.record("job_id", job.id.as_str());
        let kind = kind_label(job.kind);
        self.metrics
            .queue_wait_seconds
            .with_label_values(&[kind])
            .observe(timings.queue_wait_seconds);
        let known = Known {
            id: job.id.clone(),
            kind: job.kind,
            route: self.route(env, &job),
            provenance: None,
        };
        let result = self.prepare_valid(env, &job).await;
        timings.preprocess_seconds = started.elapsed().as_secs_f64();
        self.metrics
            .preprocess_seconds
            .with_label_values(&[kind])
            .observe(timings.preprocess_seconds);
        match result {
            Ok(image) => {
                let request = Request {
                    task: task_of(job.kind),
                    text: prompt_of(&job),
                    image,
                    params: engine_params(&job.params, &job.id, self.cfg.limits.max_new_tokens),
                };
                Ok(Prepared {
                    job,
                    request,
                    timings,
                })
            }
            Err(f) => Err((known, f, timings)),
        }
    }

    async fn prepare_valid(
        &self,
        env: &Envelope,
        job: &ValidJob,
    ) -> Result<Option<Vec<u8>>, Failure> {
        let deliveries = env.meta.previous_deliveries;
        if self.cfg.max_deliveries > 0 && deliveries >= self.cfg.max_deliveries {
            return Err(Failure::new(
                ErrorCode::WorkerCrashed,
                format!(
                    "job was delivered {deliveries} times and never finished: it kills its worker \
                     (out of memory, crash); not running it again"
                ),
            ));
        }
        if let Some(deadline) = job.deadline {
            if deadline.0 < time::OffsetDateTime::now_utc() {
                return Err(Failure::new(
                    ErrorCode::DeadlineExceeded,
                    format!(
                        "deadline {} passed before the job was picked up",
                        deadline.to_rfc3339()
                    ),
                ));
            }
        }
        match &job.image {
            None => Ok(None),
            Some(src) => Ok(Some(
                load_image(src, self.store.as_ref(), &self.cfg.limits).await?,
            )),
        }
    }

    /// Runs the batch off the async threads. A panic fails only the request
    /// that caused it: a panicking batch is re-run one request at a time.
    async fn infer(&self, requests: Vec<Request>) -> Vec<Result<Response, Failure>> {
        let n = requests.len();
        self.metrics.batch_size.observe(n as f64);
        let backend = self.backend.clone();
        let requests = Arc::new(requests);
        let reqs = requests.clone();
        match tokio::task::spawn_blocking(move || backend.run_batch(&reqs)).await {
            Ok(results) if results.len() == n => results
                .into_iter()
                .map(|r| r.map_err(Failure::from))
                .collect(),
            Ok(results) => {
                let msg = format!(
                    "backend returned {} answers for {n} requests",
                    results.len()
                );
                (0..n)
                    .map(|_| Err(Failure::new(ErrorCode::Internal, msg.clone())))
                    .collect()
            }
            Err(e) if n == 1 => vec![Err(panic_failure(e))],
            Err(_) => {
                warn!(
                    batch = n,
                    "backend panicked on a batch; re-running its requests one by one"
                );
                let mut out = Vec::with_capacity(n);
                for i in 0..n {
                    let backend = self.backend.clone();
                    let reqs = requests.clone();
                    let r = tokio::task::spawn_blocking(move || backend.run(&reqs[i])).await;
                    out.push(match r {
                        Ok(r) => r.map_err(Failure::from),
                        Err(e) => Err(panic_failure(e)),
                    });
                }
                out
            }
        }
    }

    /// Stores the image (if any) and builds the result.
    async fn finish(
        &self,
        env: &Envelope,
        p: Prepared,
        resp: Result<Response, Failure>,
    ) -> Disposition {
        let provenance = crate::provenance::of_job(&self.backend.model_info(), &p.request.params);
        let Prepared {
            job, mut timings, ..
        } = p;
        let kind = kind_label(job.kind);
        let known = Known {
            id: job.id.clone(),
            kind: job.kind,
            route: self.route(env, &job),
            provenance: Some(provenance.clone()),
        };
        self.metrics
            .inference_seconds
            .with_label_values(&[kind])
            .observe(timings.inference_seconds);
        let resp = match resp {
            Ok(r) => r,
            Err(f) => return self.fail(env, known, f, timings),
        };
        let image = match &resp.image {
            None => None,
            Some(img) => {
                let started = Instant::now();
                let key = image_key(&self.cfg.image_prefix, &job.id, &env.body);
                let stored = self.store_image(&key, img).await;
                timings.upload_seconds = started.elapsed().as_secs_f64();
                self.metrics.upload_seconds.observe(timings.upload_seconds);
                match stored {
                    Ok(loc) => Some(loc),
                    Err(f) => return self.fail(env, known, f, timings),
                }
            }
        };
        let tokens = resp.ids.len();
        self.observe_tokens(kind, &resp);
        let finish_reason = finish_reason(&resp);
        self.metrics
            .tokens_generated_total
            .with_label_values(&[kind])
            .inc_by(tokens as u64);
        if image.is_some() {
            self.metrics.images_generated_total.inc();
        }
        timings.total_seconds = env.meta.received_at.elapsed().as_secs_f64();
        info!(
            kind,
            tokens,
            image = image.is_some(),
            total_s = timings.total_seconds,
            "job done"
        );
        let route = known.route;
        Disposition::Complete(
            Box::new(JobResult {
                version: SCHEMA_VERSION,
                job_id: job.id.clone(),
                status: ResultStatus::Ok,
                kind: job.kind,
                text: resp.text,
                image,
                timings,
                model_id: self.backend.model_id().to_string(),
                worker_id: self.cfg.worker_id.clone(),
                error: None,
                correlation_id: route.correlation_id.clone().unwrap_or_default(),
                attempt: env.meta.attempt,
                finish_reason,
                tokens_generated: u32::try_from(tokens).unwrap_or(u32::MAX),
                provenance: Some(provenance),
            }),
            route,
        )
    }

    /// Prompt tokens, time to first token and time per output token, as the
    /// engine measured them (its time, not the queue's).
    fn observe_tokens(&self, kind: &str, resp: &Response) {
        let m = &self.metrics;
        let t = &resp.timings;
        m.prompt_tokens_total
            .with_label_values(&[kind])
            .inc_by(resp.prompt_ids.len() as u64);
        if !resp.ids.is_empty() {
            m.time_to_first_token_seconds
                .with_label_values(&[kind])
                .observe(t.preprocess_s + t.prefill_s);
        }
        if resp.ids.len() > 1 {
            m.time_per_output_token_seconds
                .with_label_values(&[kind])
                .observe(t.decode_s / (resp.ids.len() - 1) as f64);
        }
    }

    async fn store_image(
        &self,
        key: &str,
        img: &vargpt_engine::GeneratedImage,
    ) -> Result<ImageLocation, Failure> {
        let png = img.to_png().map_err(|e| {
            Failure::new(
                ErrorCode::Internal,
                format!("cannot encode the generated image: {e}"),
            )
        })?;
        let sha = hex::encode(Sha256::digest(&png));
        let obj = self
            .store
            .put_png(key, png, &sha)
            .await
            .map_err(upload_failure)?;
        Ok(ImageLocation {
            bucket: obj.bucket,
            key: obj.key,
            url: obj.url,
            width: img.width,
            height: img.height,
            sha256: sha,
        })
    }

    /// A failure becomes a retry (transient, attempts left) or a dead letter.
    fn fail(
        &self,
        env: &Envelope,
        known: Known,
        failure: Failure,
        mut timings: Timings,
    ) -> Disposition {
        let attempt = env.meta.attempt;
        if failure.code.is_transient() && attempt < self.cfg.max_attempts {
            warn!(parent: &env.span, code = %failure.code, attempt, error = %failure.message, "transient failure, will retry");
            return Disposition::Retry {
                attempt: attempt + 1,
                error: failure.info(),
                kind: known.kind,
            };
        }
        warn!(parent: &env.span, code = %failure.code, attempt, error = %failure.message, "job failed");
        timings.total_seconds = env.meta.received_at.elapsed().as_secs_f64();
        let route = known.route;
        let expired = failure.code == ErrorCode::DeadlineExceeded && !self.cfg.dead_letter_expired;
        let answer = if expired {
            Disposition::Answer
        } else {
            Disposition::DeadLetter
        };
        answer(
            Box::new(JobResult {
                version: SCHEMA_VERSION,
                job_id: known.id,
                status: ResultStatus::Error,
                kind: known.kind,
                timings,
                model_id: self.backend.model_id().to_string(),
                worker_id: self.cfg.worker_id.clone(),
                error: Some(failure.info()),
                correlation_id: route.correlation_id.clone().unwrap_or_default(),
                attempt,
                provenance: Some(
                    known.provenance.unwrap_or_else(|| {
                        crate::provenance::static_part(&self.backend.model_info())
                    }),
                ),
                ..Default::default()
            }),
            route,
        )
    }

    fn known_from_hints(&self, env: &Envelope, hints: &JobHints) -> Known {
        Known {
            id: hints
                .id
                .clone()
                .or_else(|| env.meta.message_id.clone())
                .unwrap_or_default(),
            kind: hints.kind.unwrap_or_default(),
            route: Route {
                reply_to: hints.reply_to.clone().or_else(|| env.meta.reply_to.clone()),
                correlation_id: hints
                    .correlation_id
                    .clone()
                    .or_else(|| env.meta.correlation_id.clone()),
            },
            provenance: None,
        }
    }

    /// The body's reply-to / correlation id win over the transport's.
    fn route(&self, env: &Envelope, job: &ValidJob) -> Route {
        Route {
            reply_to: job.reply_to.clone().or_else(|| env.meta.reply_to.clone()),
            correlation_id: job
                .correlation_id
                .clone()
                .or_else(|| env.meta.correlation_id.clone()),
        }
    }
}

#[cfg(test)]
mod tests;
