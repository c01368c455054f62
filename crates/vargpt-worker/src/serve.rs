//! The service mode: health server first (so probes answer while loading),
//! then model, then the bucket check, then the broker; reconnects on broker
//! loss; on SIGTERM stops consuming, drains, exits 0.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use lapin::options::BasicCancelOptions;
use tracing::{error, info, warn};

use vargpt_proto::exit_code;

use crate::amqp::{self, AmqpSettings, AmqpSink, AmqpSource, Topology};
use crate::backend::Backend;
use crate::config::ServeArgs;
use crate::health::{self, Readiness};
use crate::metrics::Metrics;
use crate::pipeline::process::PipelineConfig;
use crate::pipeline::runner::{RunEnd, Runner};
use crate::pipeline::{ImageStore, Pipeline};
use crate::shutdown::{self, Shutdown};
use crate::store::{S3Settings, S3Store};

/// Runs until SIGTERM (exit code 0) or until the engine dies (1: the
/// process must restart; its jobs went back to the queue).
pub async fn run(args: ServeArgs) -> anyhow::Result<i32> {
    args.check()?;
    let on_gpu = args.model.on_gpu();
    let (concurrency, batch_max) = args.pipeline.slots(on_gpu);
    let max_batch = args.pipeline.max_batch(on_gpu);
    for w in args.pipeline.deprecations(&args.model) {
        tracing::warn!("{w}");
    }
    let worker_id = args.pipeline.worker_id();
    let limits = args.limits.limits(Some(&args.s3_bucket))?;
    let topology = Arc::new(Topology {
        prefix: args.queue_prefix.clone(),
        delivery_limit: args.delivery_limit,
        retry_delays: args.retry_delays()?,
    });
    let amqp_settings = AmqpSettings {
        url: args.amqp_url()?,
        ca_pem: args.amqp_ca_pem()?,
        connection_name: format!("vargpt-worker {worker_id}"),
        prefetch: args.prefetch(),
        max_backoff: Duration::from_millis(args.reconnect_max_backoff_ms.max(100)),
    };
    let (trigger, shutdown) =
        shutdown::on_signals_with_trigger().context("installing signal handlers")?;

    let metrics = Arc::new(Metrics::new().context("registering metrics")?);
    let readiness = Arc::new(Readiness::new(metrics.clone()));
    let bound = health::serve(args.http_addr, metrics.clone(), readiness.clone())
        .await
        .with_context(|| format!("binding the health server to {}", args.http_addr))?;
    info!(%worker_id, http = %bound, broker = %amqp::redacted(amqp_settings.url.expose()), "worker starting");

    let engine = crate::load::EngineSettings {
        max_batch: max_batch as usize,
        job_timeout: Duration::from_secs(args.pipeline.job_timeout_secs),
    };
    let backend = tokio::select! {
        b = crate::load::load(&args.model, &limits, args.limits.max_prompt_tokens, engine, &metrics) => b.context("loading the model")?,
        _ = shutdown.wait() => return Ok(exit_code::OK),
    };
    readiness.set_model_loaded();
    tokio::spawn(crate::gpu_stats::run(
        metrics.clone(),
        Duration::from_secs(15),
    ));
    watch_engine(
        backend.clone(),
        readiness.clone(),
        trigger,
        shutdown.clone(),
    );
    let engine = backend.clone();

    let store: Arc<dyn ImageStore> = Arc::new(
        S3Store::new(S3Settings {
            bucket: args.s3_bucket.clone(),
            endpoint: args.s3_endpoint.clone(),
            region: args.s3_region.clone(),
            path_style: args.s3_path_style,
            public_base_url: args.s3_public_url.clone(),
            connect_timeout: Duration::from_secs(3),
            operation_timeout: Duration::from_secs(args.s3_timeout_secs.max(1)),
            max_attempts: 3,
        })
        .await,
    );
    if !wait_for_store(store.as_ref(), &readiness, &shutdown).await {
        return Ok(exit_code::OK);
    }
    tokio::spawn(watch_store(
        store.clone(),
        readiness.clone(),
        shutdown.clone(),
    ));

    let pipeline = Arc::new(Pipeline::new(
        backend,
        store,
        metrics.clone(),
        PipelineConfig {
            limits,
            worker_id: worker_id.clone(),
            image_prefix: args.pipeline.image_prefix.clone(),
            max_attempts: topology.max_attempts(),
            max_deliveries: args.delivery_limit,
            isolate_suspects: true,
            dead_letter_expired: args.dead_letter_expired,
        },
    ));
    info!(max_batch, concurrency, batch_max, "jobs held at once");
    let runner = Runner::new(pipeline, concurrency, batch_max as usize);
    let broker = Broker {
        settings: amqp_settings,
        topology,
        worker_id: worker_id.clone(),
        confirm_timeout: Duration::from_secs(args.broker_timeout_secs.max(1)),
    };
    let grace = Duration::from_secs(args.shutdown_grace_secs);
    consume(&runner, &broker, &readiness, &shutdown, grace).await;
    readiness.set_draining();
    if !engine.is_alive() {
        error!("the engine died; exiting so the process restarts");
        return Ok(exit_code::FAILED);
    }
    info!("worker stopped");
    Ok(exit_code::OK)
}

/// Polls the engine; once it died, readiness and health fail and shutdown
/// starts (the runner has stopped taking jobs already).
fn watch_engine(
    backend: Arc<dyn Backend>,
    readiness: Arc<Readiness>,
    trigger: Arc<shutdown::ShutdownTrigger>,
    shutdown: Shutdown,
) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
            if !backend.is_alive() {
                error!("the engine is dead (its batching thread is gone)");
                readiness.set_engine_dead();
                trigger.trigger();
                return;
            }
        }
    });
}

/// Re-checks the store while serving, so a store that stalls or goes away
/// turns readiness red instead of holding jobs unnoticed.
async fn watch_store(store: Arc<dyn ImageStore>, readiness: Arc<Readiness>, shutdown: Shutdown) {
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(STORE_CHECK_EVERY) => {}
        }
        let state = match tokio::time::timeout(STORE_CHECK_TIMEOUT, store.check()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "no answer within {} s",
                STORE_CHECK_TIMEOUT.as_secs()
            )),
        };
        if let Err(e) = &state {
            warn!(store = %store.describe(), error = %e, "object store check failed");
        }
        readiness.set_store(state);
    }
}

const STORE_CHECK_EVERY: Duration = Duration::from_secs(10);
const STORE_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// How to reach the broker and what to declare there.
struct Broker {
    settings: AmqpSettings,
    topology: Arc<Topology>,
    worker_id: String,
    confirm_timeout: Duration,
}

/// Checks the bucket until it answers (readiness says why it is not ready
/// meanwhile). False if shutdown came first.
async fn wait_for_store(
    store: &dyn ImageStore,
    readiness: &Readiness,
    shutdown: &Shutdown,
) -> bool {
    let mut delay = Duration::from_millis(250);
    loop {
        match store.check().await {
            Ok(()) => {
                info!(store = %store.describe(), "object store reachable");
                readiness.set_store(Ok(()));
                return true;
            }
            Err(e) => {
                error!(store = %store.describe(), error = %e, "object store not reachable; not taking jobs");
                readiness.set_store(Err(e.to_string()));
            }
        }
        tokio::select! {
            _ = shutdown.wait() => return false,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

/// Connect → consume → on loss reconnect, until shutdown. On shutdown the
/// consumer is cancelled first (no new deliveries), in-flight jobs are
/// drained, and only then is the connection closed: closing it returns any
/// prefetched, unstarted messages to the queue.
async fn consume(
    runner: &Runner,
    broker: &Broker,
    readiness: &Arc<Readiness>,
    shutdown: &Shutdown,
    grace: Duration,
) {
    let worker_id = broker.worker_id.as_str();
    loop {
        let Some(session) =
            amqp::connect(&broker.settings, &broker.topology, worker_id, shutdown).await
        else {
            return;
        };
        readiness.set_broker(true);
        readiness.set_broker_stalled(None);
        let connection = Arc::new(session.connection);
        let lost = Arc::new(tokio::sync::Notify::new());
        let sink = Arc::new(AmqpSink::new(
            connection.clone(),
            broker.topology.clone(),
            worker_id.to_string(),
            broker.confirm_timeout,
            readiness.clone(),
            lost.clone(),
        ));
        let mut source = AmqpSource::new(session.consumer.clone(), session.suspects.clone(), lost);
        let end = runner.run(&mut source, sink, shutdown).await;
        readiness.set_broker(false);
        match end {
            RunEnd::Shutdown => {
                readiness.set_draining();
                for tag in [worker_id.to_string(), format!("{worker_id}.suspects")] {
                    let cancel = session
                        .consume
                        .basic_cancel(tag.as_str().into(), BasicCancelOptions::default());
                    match tokio::time::timeout(broker.confirm_timeout, cancel).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => warn!(error = %e, "cancelling the consumer failed"),
                        Err(_) => warn!("cancelling the consumer got no answer"),
                    }
                }
                let drained = runner.drain(grace).await;
                info!(
                    drained,
                    "in-flight jobs finished; closing the broker connection"
                );
                close(&connection, 200, "worker shutting down").await;
                return;
            }
            RunEnd::Disconnected(e) => {
                warn!(error = %e, "lost the broker; reconnecting (unacked jobs go back to the queue)");
                close(&connection, 320, "reconnecting").await;
            }
            RunEnd::Exhausted => {
                warn!("consumer ended; reconnecting");
                close(&connection, 320, "reconnecting").await;
            }
        }
    }
}

/// Closes the connection, bounded: a stalled broker must not hold shutdown.
async fn close(connection: &lapin::Connection, code: u16, why: &str) {
    let _ = tokio::time::timeout(Duration::from_secs(5), connection.close(code, why.into())).await;
}
