//! The composition root: config → store, writer, sources, uplinks, summary → wait for a
//! signal → ordered shutdown. Shutdown order is what keeps it lossless: sources stop
//! first, the writer commits everything they handed over, then the uplinks stop (an
//! upload in flight is abandoned and stays in the store). SIGHUP re-reads the config
//! ([`supervise`] restarts what changed) and the model files.

mod supervise;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Durability};
use crate::ops::{Stats, summary};
use crate::store::writer::{self, Ingest, WriterSettings};
use crate::store::{LogStore, Store, StoreError};

/// Samples (in source events) that may wait for the writer before sources feel
/// back-pressure.
const INGEST_QUEUE: usize = 1024;
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

/// When to stop besides a signal, and where the config came from (for SIGHUP).
#[derive(Debug, Clone, Default)]
pub struct RunLimits {
    pub duration: Option<Duration>,
    pub config_path: Option<std::path::PathBuf>,
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

    let (committed_tx, committed_rx) = watch::channel(store.committed());
    let (ingest_tx, ingest_rx) = mpsc::channel::<Ingest>(INGEST_QUEUE);
    let mut shared = supervise::Shared {
        gateway_id: config.gateway.id.clone(),
        store: store.clone(),
        stats: stats.clone(),
        health: health.clone(),
        committed: committed_rx,
        ingest: Some(ingest_tx),
    };
    // Before the first source starts: from then on a SIGTERM must drain, not kill. Taken
    // later (it was after READY=1), a stop sent as soon as systemd saw the daemon ready
    // found no handler and killed it mid-commit.
    let mut signals = Signals::new(limits.duration)?;
    // Builds every source and uplink before starting any: a set-up error starts nothing.
    let mut supervisor = supervise::Supervisor::default();
    supervisor.start_all(&shared, &config)?;

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
            // A pass gathers for as long as a commit waits anyway: at 2,000 msg/s, 25 ms
            // instead of 5 took a fifth less of the daemon's CPU, for no more latency
            // (BENCHMARKS.md, "Gathering for as long as a commit waits").
            config.store.commit_spacing,
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
            commit_spacing: config.store.commit_spacing,
            priority: config.store.priority.clone(),
        },
        committed_tx,
        stats.clone(),
    ));

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
    match crate::ops::memory::release_code_pages() {
        Ok(bytes) => log::debug!("gave back {} KiB of start-up code pages", bytes / 1024),
        Err(e) => log::debug!("cannot give back start-up code pages: {e}"),
    }

    let mut running_config = config;
    loop {
        match signals.next().await {
            Event::Stop => break,
            Event::Reload => {
                crate::ops::health::notify(&["RELOADING=1"]);
                reload(
                    limits.config_path.as_deref(),
                    &mut running_config,
                    &mut supervisor,
                    &shared,
                )
                .await;
                crate::ops::health::notify(&["READY=1"]);
            }
        }
    }
    crate::ops::health::notify(&["STOPPING=1"]);
    log::info!("stopping: sources first, then committing what is in flight");

    supervisor.stop_sources(&health).await;
    // The last sender: once the writer has what the sources handed over, it finishes.
    shared.ingest = None;
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
    supervisor.drain_uplinks(UPLINK_STOP_GRACE).await;
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
    if running_config.store.durability == Durability::Interval {
        log::debug!("store flushed at shutdown");
    }
    Ok(stats)
}

/// Re-reads the config. An invalid one is refused, with every error logged, and the
/// running config stays; a valid one replaces the sources and uplinks that changed. What
/// cannot change without a restart is named.
async fn reload(
    path: Option<&std::path::Path>,
    running: &mut Config,
    supervisor: &mut supervise::Supervisor,
    shared: &supervise::Shared,
) {
    let Some(path) = path else {
        log::info!("SIGHUP: no config file to re-read (the demo); model files are re-read");
        return;
    };
    let path = path.to_path_buf();
    let loaded = tokio::task::spawn_blocking(move || {
        crate::config::load(&path, &crate::config::SystemEnvironment)
    })
    .await;
    let new = match loaded {
        Ok(Ok(config)) => config,
        Ok(Err(e)) => {
            log::error!("reload refused, the running config stays:");
            for line in e.to_string().lines() {
                log::error!("{line}");
            }
            return;
        }
        Err(e) => {
            log::error!("reload failed, the running config stays: {e}");
            return;
        }
    };
    for (what, changed) in [
        ("[gateway]", new.gateway != running.gateway),
        ("[store]", new.store != running.store),
        ("[[models]] bindings", new.models != running.models),
        (
            "[log] summary_interval",
            new.log.summary_interval != running.log.summary_interval,
        ),
    ] {
        if changed {
            log::warn!(
                "reload: {what} changed; that takes effect at the next start (systemctl restart tidegate)"
            );
        }
    }
    if new.log.level != running.log.level {
        crate::ops::logging::init(new.log.level);
        log::info!("reload: log level now {}", new.log.level);
    }
    match supervisor.apply(shared, &new).await {
        Ok(changes) if changes.is_empty() => {
            log::info!("reload: no source or uplink changed");
        }
        Ok(changes) => {
            let list = |v: &[String]| {
                if v.is_empty() {
                    "none".to_string()
                } else {
                    v.join(", ")
                }
            };
            log::info!(
                "reload: started {}; restarted {}; stopped {}; the rest kept running",
                list(&changes.started),
                list(&changes.restarted),
                list(&changes.stopped)
            );
            for line in new.describe().lines() {
                log::info!("plan: {line}");
            }
        }
        Err(e) => {
            log::error!("reload refused, the running config stays: {e}");
            return;
        }
    }
    running.log = new.log.clone();
    running.mqtt_sources = new.mqtt_sources;
    running.modbus_sources = new.modbus_sources;
    running.simulated_sources = new.simulated_sources;
    running.uplinks = new.uplinks;
    running.files = new.files;
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

enum Event {
    Stop,
    Reload,
}

/// SIGTERM / SIGINT stop, SIGHUP reloads, and the optional run-time limit stops.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    deadline: Option<tokio::time::Instant>,
}

impl Signals {
    fn new(duration: Option<Duration>) -> Result<Self, AppError> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate()).map_err(AppError::Signals)?,
            int: signal(SignalKind::interrupt()).map_err(AppError::Signals)?,
            hup: signal(SignalKind::hangup()).map_err(AppError::Signals)?,
            deadline: duration.map(|d| tokio::time::Instant::now() + d),
        })
    }

    async fn next(&mut self) -> Event {
        let deadline = async {
            match self.deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = self.term.recv() => { log::info!("SIGTERM received"); Event::Stop }
            _ = self.int.recv() => { log::info!("SIGINT received"); Event::Stop }
            _ = self.hup.recv() => {
                log::info!("SIGHUP received: re-reading the config and the model files");
                Event::Reload
            }
            _ = deadline => { log::info!("run duration reached"); Event::Stop }
        }
    }
}
