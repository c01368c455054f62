//! The service mode: health server first (so probes answer while loading),
//! then model, then the bucket check, then the broker; reconnects on broker
//! loss; on SIGTERM stops consuming, drains, exits 0.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use lapin::options::BasicCancelOptions;
use tracing::{error, info, warn};

use crate::amqp::{self, AmqpSettings, AmqpSink, AmqpSource, Topology};
use crate::config::ServeArgs;
use crate::health::{self, Readiness};
use crate::metrics::Metrics;
use crate::pipeline::process::PipelineConfig;
use crate::pipeline::runner::{RunEnd, Runner};
use crate::pipeline::{ImageStore, Pipeline};
use crate::shutdown::{self, Shutdown};
use crate::store::{S3Settings, S3Store};

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    args.check()?;
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
    let shutdown = shutdown::on_signals().context("installing signal handlers")?;

    let metrics = Arc::new(Metrics::new().context("registering metrics")?);
    let readiness = Arc::new(Readiness::new(metrics.clone()));
    let bound = health::serve(args.http_addr, metrics.clone(), readiness.clone())
        .await
        .with_context(|| format!("binding the health server to {}", args.http_addr))?;
    info!(%worker_id, http = %bound, broker = %amqp::redacted(amqp_settings.url.expose()), "worker starting");

    let backend = tokio::select! {
        b = crate::backend::load(&args.model, &limits, args.limits.max_prompt_tokens, &metrics) => b.context("loading the model")?,
        _ = shutdown.wait() => return Ok(()),
    };
    readiness.set_model_loaded();

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
        return Ok(());
    }

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
        },
    ));
    let runner = Runner::new(
        pipeline,
        args.pipeline.concurrency,
        args.pipeline.batch_max as usize,
    );
    let grace = Duration::from_secs(args.shutdown_grace_secs);
    consume(
        &runner,
        &amqp_settings,
        &topology,
        &worker_id,
        &readiness,
        &shutdown,
        grace,
    )
    .await;
    readiness.set_draining();
    info!("worker stopped");
    Ok(())
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
    settings: &AmqpSettings,
    topology: &Topology,
    worker_id: &str,
    readiness: &Readiness,
    shutdown: &Shutdown,
    grace: Duration,
) {
    loop {
        let Some(session) = amqp::connect(settings, topology, worker_id, shutdown).await else {
            return;
        };
        readiness.set_broker(true);
        let sink = Arc::new(AmqpSink::new(
            session.publish.clone(),
            session.consume.clone(),
            Arc::new(topology.clone()),
            worker_id.to_string(),
        ));
        let mut source = AmqpSource::new(session.consumer.clone());
        let end = runner.run(&mut source, sink, shutdown).await;
        readiness.set_broker(false);
        match end {
            RunEnd::Shutdown => {
                readiness.set_draining();
                if let Err(e) = session
                    .consume
                    .basic_cancel(worker_id.into(), BasicCancelOptions::default())
                    .await
                {
                    warn!(error = %e, "cancelling the consumer failed");
                }
                let drained = runner.drain(grace).await;
                info!(
                    drained,
                    "in-flight jobs finished; closing the broker connection"
                );
                let _ = session
                    .connection
                    .close(200, "worker shutting down".into())
                    .await;
                return;
            }
            RunEnd::Disconnected(e) => {
                warn!(error = %e, "lost the broker; reconnecting (unacked jobs go back to the queue)");
                let _ = session.connection.close(320, "reconnecting".into()).await;
            }
            RunEnd::Exhausted => {
                warn!("consumer ended; reconnecting");
                let _ = session.connection.close(320, "reconnecting".into()).await;
            }
        }
    }
}
