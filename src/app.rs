//! The composition root: config → store, writer, sources, uplinks, summary → wait for a
//! signal → ordered shutdown. Shutdown order is what keeps it lossless: sources stop
//! first, the writer commits everything they handed over, then the uplinks stop (an
//! upload in flight is abandoned and stays in the store).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Durability, UplinkKind};
use crate::ops::{Stats, summary};
use crate::sources::mqtt::MqttSource;
use crate::sources::sim::SimulatedPlant;
use crate::store::writer::{self, Ingest, WriterSettings};
use crate::store::{LogStore, Store, StoreError};
use crate::uplink::http::HttpSink;
use crate::uplink::local::{FileSink, StdoutSink};
use crate::uplink::{self, UplinkSettings};

/// Samples (in source events) that may wait for the writer before sources feel
/// back-pressure.
const INGEST_QUEUE: usize = 1024;
const SOURCE_STOP_GRACE: Duration = Duration::from_secs(5);
const WRITER_DRAIN_GRACE: Duration = Duration::from_secs(15);
const UPLINK_STOP_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot create the state directory {path}: {source}")]
    StateDir {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Something in the config that only shows when it is used (a CA file that does not
    /// parse, say). Reported like a config error.
    #[error("{0}")]
    Setup(String),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// When to stop besides a signal.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunLimits {
    pub duration: Option<Duration>,
}

/// Runs the gateway until SIGTERM/SIGINT (or the duration limit).
pub async fn run(config: Config, limits: RunLimits) -> Result<Arc<Stats>, AppError> {
    crate::tls::install_crypto_provider();
    let state_dir = config.gateway.state_dir.clone();
    std::fs::create_dir_all(&state_dir).map_err(|source| AppError::StateDir {
        path: state_dir.display().to_string(),
        source,
    })?;
    let uplink_names: Vec<String> = config.uplinks.iter().map(|u| u.name.clone()).collect();
    let options = config.store.options();
    let opened =
        tokio::task::spawn_blocking(move || LogStore::open(&state_dir, &uplink_names, options))
            .await
            .map_err(|e| AppError::Setup(format!("store open failed: {e}")))??;
    let store: Arc<dyn Store> = Arc::new(opened);
    let backlog = store.stats()?;
    log::info!(
        "tidegate {} starting: gateway {}, store {} ({} records buffered, {:?} durability)",
        env!("CARGO_PKG_VERSION"),
        config.gateway.id,
        config.gateway.state_dir.display(),
        backlog.records,
        config.store.durability
    );
    for line in config.describe().lines() {
        log::info!("plan: {line}");
    }
    let stats = Arc::new(Stats::default());
    let health = Arc::new(crate::ops::health::Health::from_env());

    // Build everything that can fail before starting anything.
    let mut mqtt_sources = Vec::new();
    for source in &config.mqtt_sources {
        mqtt_sources
            .push(MqttSource::new(source.clone()).map_err(|e| AppError::Setup(e.to_string()))?);
    }
    let (committed_tx, committed_rx) = watch::channel(store.committed());
    let uplink_signals = uplink::StopSignals::default();
    let mut uplink_tasks: Vec<JoinHandle<()>> = Vec::new();
    for u in &config.uplinks {
        let (backoff_min, backoff_max, retry_after_max) = match &u.kind {
            UplinkKind::Http(h) => (h.backoff.min, h.backoff.max, h.retry_after_max),
            UplinkKind::Mqtt(m) => (m.backoff.min, m.backoff.max, m.backoff.max),
            _ => (
                Duration::from_millis(500),
                Duration::from_secs(30),
                Duration::from_secs(60),
            ),
        };
        // The longest a batch may legitimately take: the uplink's own deadline.
        let deadline = match &u.kind {
            UplinkKind::Http(h) => h.timeout + Duration::from_secs(5),
            UplinkKind::Mqtt(m) => m.timeout + m.connect_timeout + Duration::from_secs(5),
            // A batch to a local file or stdout: seconds even on slow flash.
            _ => Duration::from_secs(10),
        };
        let settings = UplinkSettings {
            stage: health.stage(format!("uplink {}", u.name), deadline),
            name: u.name.clone(),
            batching: u.batching,
            backoff_min,
            backoff_max,
            retry_after_max,
        };
        let (store, rx, stats, token) = (
            store.clone(),
            committed_rx.clone(),
            stats.clone(),
            uplink_signals.clone(),
        );
        let task = match &u.kind {
            UplinkKind::Http(h) => {
                let sink = HttpSink::new(&config.gateway.id, h)
                    .map_err(|e| AppError::Setup(format!("uplink {}: {e}", u.name)))?;
                tokio::spawn(uplink::run(sink, settings, store, rx, stats, token))
            }
            UplinkKind::Mqtt(m) => {
                let sink = crate::uplink::mqtt::MqttSink::new(&u.name, &config.gateway.id, m)
                    .map_err(|e| AppError::Setup(format!("uplink {}: {e}", u.name)))?;
                tokio::spawn(uplink::run(sink, settings, store, rx, stats, token))
            }
            UplinkKind::File { path } => tokio::spawn(uplink::run(
                FileSink::new(path.clone()),
                settings,
                store,
                rx,
                stats,
                token,
            )),
            UplinkKind::Stdout { format } => tokio::spawn(uplink::run(
                StdoutSink::new(*format),
                settings,
                store,
                rx,
                stats,
                token,
            )),
        };
        uplink_tasks.push(task);
    }

    let (ingest_tx, ingest_rx) = mpsc::channel::<Ingest>(INGEST_QUEUE);
    // With models, the enrichment stage sits between the sources and the writer.
    let (writer_rx, pipeline_task) = if config.models.is_empty() {
        (ingest_rx, None)
    } else {
        let bindings = load_bindings(&config.models, &stats).await;
        let (enriched_tx, enriched_rx) = mpsc::channel::<Ingest>(INGEST_QUEUE);
        let (reload_tx, reload_rx) = mpsc::unbounded_channel();
        tokio::spawn(reload_models_on_sighup(config.models.clone(), reload_tx));
        let task = tokio::spawn(crate::pipeline::stage::run(
            bindings,
            ingest_rx,
            enriched_tx,
            stats.clone(),
            reload_rx,
            // Each run has a 2 s deadline; a batch can take a few.
            health.stage("the inference stage", Duration::from_secs(10)),
        ));
        (enriched_rx, Some(task))
    };
    let writer_task = tokio::spawn(writer::run(
        store.clone(),
        writer_rx,
        WriterSettings {
            // A commit is one fsync; slow flash can take seconds, never this long.
            stage: health.stage("the store writer", Duration::from_secs(30)),
            durability: config.store.durability,
            flush_interval: config.store.flush_interval,
            commit_batch: config.store.commit_batch,
            priority: config.store.priority.clone(),
        },
        committed_tx,
        stats.clone(),
    ));

    let source_shutdown = CancellationToken::new();
    let mut source_tasks: Vec<JoinHandle<()>> = Vec::new();
    for source in mqtt_sources {
        source_tasks.push(tokio::spawn(source.run(
            ingest_tx.clone(),
            stats.clone(),
            source_shutdown.clone(),
        )));
    }
    for sim in &config.simulated_sources {
        let plant = SimulatedPlant {
            source: sim.name.clone(),
            devices: sim.devices,
            interval: sim.interval,
            seed: sim.seed,
        };
        source_tasks.push(tokio::spawn(plant.run(
            ingest_tx.clone(),
            stats.clone(),
            source_shutdown.clone(),
        )));
    }
    for modbus in &config.modbus_sources {
        let deadline = crate::sources::modbus::bus::longest_poll(modbus) + Duration::from_secs(5);
        source_tasks.push(tokio::spawn(crate::sources::modbus::run(
            modbus.clone(),
            ingest_tx.clone(),
            stats.clone(),
            source_shutdown.clone(),
            health.stage(format!("modbus {}", modbus.name), deadline),
        )));
    }
    drop(ingest_tx);

    let summary_shutdown = CancellationToken::new();
    let summary_task = config.log.summary_interval.map(|interval| {
        tokio::spawn(summary::run(
            interval,
            stats.clone(),
            store.clone(),
            summary_shutdown.clone(),
        ))
    });

    let watchdog_shutdown = CancellationToken::new();
    let watchdog_task = tokio::spawn(crate::ops::health::run(
        health.clone(),
        {
            let (stats, store) = (stats.clone(), store.clone());
            move || summary::status(&stats, &store)
        },
        watchdog_shutdown.clone(),
    ));
    crate::ops::health::notify(&[
        "READY=1",
        &format!("STATUS={}", summary::status(&stats, &store)),
    ]);
    match health.watchdog_interval() {
        Some(interval) => log::info!(
            "ready (watchdog every {}, pinged while every stage makes progress)",
            humantime::format_duration(interval)
        ),
        None => log::info!("ready"),
    }

    wait_for_stop(limits).await?;
    crate::ops::health::notify(&["STOPPING=1"]);
    log::info!("stopping: sources first, then committing what is in flight");

    source_shutdown.cancel();
    for task in source_tasks {
        if tokio::time::timeout(SOURCE_STOP_GRACE, task).await.is_err() {
            log::warn!("a source did not stop within {SOURCE_STOP_GRACE:?}");
        }
    }
    if let Some(task) = pipeline_task
        && tokio::time::timeout(WRITER_DRAIN_GRACE, task)
            .await
            .is_err()
    {
        log::error!("the inference stage did not finish within {WRITER_DRAIN_GRACE:?}");
    }
    match tokio::time::timeout(WRITER_DRAIN_GRACE, writer_task).await {
        Ok(_) => {}
        Err(_) => log::error!(
            "the store writer did not finish within {WRITER_DRAIN_GRACE:?}; unacknowledged MQTT messages stay with the broker"
        ),
    }
    // Give the uplinks a moment to send what was just committed; whatever they cannot
    // send in time stays in the store for the next start.
    uplink_signals.drain.cancel();
    let stopper = uplink_signals.stop.clone();
    let hard_stop = tokio::spawn(async move {
        tokio::time::sleep(UPLINK_STOP_GRACE).await;
        stopper.cancel();
    });
    for task in uplink_tasks {
        let _ = task.await;
    }
    hard_stop.abort();
    summary_shutdown.cancel();
    watchdog_shutdown.cancel();
    let _ = watchdog_task.await;
    if let Some(task) = summary_task {
        let _ = task.await;
    }
    log::info!(
        "{}",
        summary::line(&stats, &store, 0.0)
            .await
            .replacen("summary:", "final:", 1)
    );
    let store_for_flush = store.clone();
    let _ = tokio::task::spawn_blocking(move || store_for_flush.flush()).await;
    if config.store.durability == Durability::Interval {
        log::debug!("store flushed at shutdown");
    }
    Ok(stats)
}

/// Loads every model binding. A model that cannot be loaded is logged as an ERROR and its
/// devices go unscored: the data itself keeps flowing.
pub async fn load_bindings(
    configs: &[crate::config::ModelBindingConfig],
    stats: &Stats,
) -> Vec<crate::pipeline::stage::Binding> {
    let mut bindings = Vec::new();
    for config in configs {
        let (path, overrides, name) = (
            config.path.clone(),
            config.overrides.clone(),
            config.name.clone(),
        );
        let loaded = tokio::task::spawn_blocking(move || {
            crate::pipeline::model::load(&path, &overrides, &name)
        })
        .await;
        let model = match loaded {
            Ok(Ok(model)) => {
                let c = &model.contract;
                log::info!(
                    "model {}: {} {} loaded in {} ms: window {} × ({}), threshold {:.4}, devices {}",
                    config.name,
                    c.name,
                    c.version,
                    model.load_time.as_millis(),
                    c.window,
                    c.channels.join(", "),
                    c.threshold,
                    config.devices.join(", ")
                );
                Some(Arc::new(model))
            }
            Ok(Err(e)) => {
                Stats::add(&stats.inference_failures, 1);
                log::error!(
                    "model {}: {e}; its devices are not scored, their data still flows",
                    config.name
                );
                None
            }
            Err(e) => {
                Stats::add(&stats.inference_failures, 1);
                log::error!(
                    "model {}: loading failed: {e}; its devices are not scored",
                    config.name
                );
                None
            }
        };
        bindings.push(crate::pipeline::stage::Binding::new(
            config.name.clone(),
            config.devices.clone(),
            config.stride,
            config.bad_values,
            model,
        ));
    }
    bindings
}

/// On SIGHUP, re-reads every model file. A model that loads and fits its binding
/// replaces the one in use; one that does not is logged and the old one stays.
async fn reload_models_on_sighup(
    configs: Vec<crate::config::ModelBindingConfig>,
    reloads: mpsc::UnboundedSender<crate::pipeline::stage::Reload>,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        for (index, config) in configs.iter().enumerate() {
            let (path, overrides, name) = (
                config.path.clone(),
                config.overrides.clone(),
                config.name.clone(),
            );
            match tokio::task::spawn_blocking(move || {
                crate::pipeline::model::load(&path, &overrides, &name)
            })
            .await
            {
                Ok(Ok(model)) => {
                    if reloads.send((index, Arc::new(model))).is_err() {
                        return;
                    }
                }
                Ok(Err(e)) => log::error!(
                    "model {}: reload refused, the model in use stays: {e}",
                    config.name
                ),
                Err(e) => log::error!(
                    "model {}: reload failed, the model in use stays: {e}",
                    config.name
                ),
            }
        }
    }
}

async fn wait_for_stop(limits: RunLimits) -> Result<(), AppError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(AppError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(AppError::Signals)?;
    let mut hup = signal(SignalKind::hangup()).map_err(AppError::Signals)?;
    let deadline = async {
        match limits.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = term.recv() => { log::info!("SIGTERM received"); return Ok(()); }
            _ = int.recv() => { log::info!("SIGINT received"); return Ok(()); }
            _ = hup.recv() => {
                                log::info!("SIGHUP received: model files are re-read; other config changes take effect at the next start");
            }
            _ = &mut deadline => { log::info!("run duration reached"); return Ok(()); }
        }
    }
}
