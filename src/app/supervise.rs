//! The sources and uplinks of a running daemon, by name, so that a reload (SIGHUP) can
//! stop what was removed, start what was added and restart what changed, leaving the
//! rest running. Nothing buffered is touched: a source stops by committing what it
//! handed over; an uplink stops with its batch in flight left in the store.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::AppError;
use crate::config::{
    Config, ModbusSourceConfig, MqttSourceConfig, SimulatedSourceConfig, UplinkConfig, UplinkKind,
};
use crate::ops::Stats;
use crate::ops::health::{Health, Stage};
use crate::sources::mqtt::MqttSource;
use crate::sources::sim::SimulatedPlant;
use crate::store::writer::Ingest;
use crate::store::{Committed, Store};
use crate::uplink::http::HttpSink;
use crate::uplink::local::{FileSink, StdoutSink};
use crate::uplink::{self, StopSignals, UplinkSettings};

const SOURCE_STOP_GRACE: Duration = Duration::from_secs(5);

/// What every source and uplink is started with.
pub struct Shared {
    pub gateway_id: String,
    pub store: Arc<dyn Store>,
    pub stats: Arc<Stats>,
    pub health: Arc<Health>,
    pub committed: watch::Receiver<Committed>,
    /// Kept until shutdown, so that sources can come and go while the writer runs.
    pub ingest: Option<mpsc::Sender<Ingest>>,
}

/// One source as configured.
#[derive(Clone, Debug, PartialEq)]
pub enum SourceSpec {
    Mqtt(MqttSourceConfig),
    Modbus(ModbusSourceConfig),
    Simulated(SimulatedSourceConfig),
}

impl SourceSpec {
    pub fn name(&self) -> &str {
        match self {
            SourceSpec::Mqtt(c) => &c.name,
            SourceSpec::Modbus(c) => &c.name,
            SourceSpec::Simulated(c) => &c.name,
        }
    }

    pub fn all(config: &Config) -> Vec<SourceSpec> {
        let mut specs: Vec<SourceSpec> = config
            .mqtt_sources
            .iter()
            .cloned()
            .map(SourceSpec::Mqtt)
            .collect();
        specs.extend(
            config
                .modbus_sources
                .iter()
                .cloned()
                .map(SourceSpec::Modbus),
        );
        specs.extend(
            config
                .simulated_sources
                .iter()
                .cloned()
                .map(SourceSpec::Simulated),
        );
        specs
    }
}

struct Running<C> {
    config: C,
    task: JoinHandle<()>,
    stop: StopHandle,
    stage: Option<Arc<Stage>>,
}

enum StopHandle {
    Source(CancellationToken),
    Uplink(StopSignals),
}

#[derive(Default)]
pub struct Supervisor {
    sources: BTreeMap<String, Running<SourceSpec>>,
    uplinks: BTreeMap<String, Running<UplinkConfig>>,
}

/// What a reload did, for its log line.
#[derive(Debug, Default)]
pub struct Changes {
    pub started: Vec<String>,
    pub restarted: Vec<String>,
    pub stopped: Vec<String>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.started.is_empty() && self.restarted.is_empty() && self.stopped.is_empty()
    }
}

/// A built, not yet running, uplink: everything that can fail is done.
enum BuiltSink {
    Http(Box<HttpSink>),
    Mqtt(Box<crate::uplink::mqtt::MqttSink>),
    File(FileSink),
    Stdout(StdoutSink),
}

fn build_sink(gateway: &str, u: &UplinkConfig) -> Result<BuiltSink, AppError> {
    let setup = |e: String| AppError::Setup(format!("uplink {}: {e}", u.name));
    Ok(match &u.kind {
        UplinkKind::Http(h) => BuiltSink::Http(Box::new(
            HttpSink::new(gateway, h).map_err(|e| setup(e.to_string()))?,
        )),
        UplinkKind::Mqtt(m) => BuiltSink::Mqtt(Box::new(
            crate::uplink::mqtt::MqttSink::new(&u.name, gateway, m)
                .map_err(|e| setup(e.to_string()))?,
        )),
        UplinkKind::File { path } => BuiltSink::File(FileSink::new(path.clone())),
        UplinkKind::Stdout { format } => BuiltSink::Stdout(StdoutSink::new(*format)),
    })
}

fn build_source(spec: &SourceSpec, config: &Config) -> Result<Option<MqttSource>, AppError> {
    match spec {
        SourceSpec::Mqtt(c) => Ok(Some(
            MqttSource::new(c.clone(), config.store.commit_spacing)
                .map_err(|e| AppError::Setup(e.to_string()))?,
        )),
        _ => Ok(None),
    }
}

impl Supervisor {
    /// Builds every source and uplink first, so that a config that fails at set-up (a
    /// CA file that does not parse) starts nothing.
    pub fn start_all(&mut self, shared: &Shared, config: &Config) -> Result<(), AppError> {
        let uplinks: Vec<(UplinkConfig, BuiltSink)> = config
            .uplinks
            .iter()
            .map(|u| Ok((u.clone(), build_sink(&shared.gateway_id, u)?)))
            .collect::<Result<_, AppError>>()?;
        let sources: Vec<(SourceSpec, Option<MqttSource>)> = SourceSpec::all(config)
            .into_iter()
            .map(|s| {
                let built = build_source(&s, config)?;
                Ok((s, built))
            })
            .collect::<Result<_, AppError>>()?;
        for (u, sink) in uplinks {
            self.spawn_uplink(shared, u, sink);
        }
        for (s, built) in sources {
            self.spawn_source(shared, s, built);
        }
        Ok(())
    }

    fn spawn_uplink(&mut self, shared: &Shared, u: UplinkConfig, sink: BuiltSink) {
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
        let stage = shared.health.stage(format!("uplink {}", u.name), deadline);
        let settings = UplinkSettings {
            stage: stage.clone(),
            name: u.name.clone(),
            batching: u.batching,
            backoff_min,
            backoff_max,
            retry_after_max,
        };
        let signals = StopSignals::default();
        let (store, rx, stats, token) = (
            shared.store.clone(),
            shared.committed.clone(),
            shared.stats.clone(),
            signals.clone(),
        );
        let task = match sink {
            BuiltSink::Http(s) => tokio::spawn(uplink::run(*s, settings, store, rx, stats, token)),
            BuiltSink::Mqtt(s) => tokio::spawn(uplink::run(*s, settings, store, rx, stats, token)),
            BuiltSink::File(s) => tokio::spawn(uplink::run(s, settings, store, rx, stats, token)),
            BuiltSink::Stdout(s) => tokio::spawn(uplink::run(s, settings, store, rx, stats, token)),
        };
        self.uplinks.insert(
            u.name.clone(),
            Running {
                config: u,
                task,
                stop: StopHandle::Uplink(signals),
                stage: Some(stage),
            },
        );
    }

    fn spawn_source(&mut self, shared: &Shared, spec: SourceSpec, built: Option<MqttSource>) {
        let Some(tx) = shared.ingest.clone() else {
            return;
        };
        let shutdown = CancellationToken::new();
        let stats = shared.stats.clone();
        let (task, stage) = match (&spec, built) {
            (SourceSpec::Mqtt(_), Some(source)) => {
                (tokio::spawn(source.run(tx, stats, shutdown.clone())), None)
            }
            (SourceSpec::Modbus(c), _) => {
                let deadline =
                    crate::sources::modbus::bus::longest_poll(c) + Duration::from_secs(5);
                let stage = shared.health.stage(format!("modbus {}", c.name), deadline);
                let task = tokio::spawn(crate::sources::modbus::run(
                    c.clone(),
                    tx,
                    stats,
                    shutdown.clone(),
                    stage.clone(),
                ));
                (task, Some(stage))
            }
            (SourceSpec::Simulated(c), _) => {
                let plant = SimulatedPlant {
                    source: c.name.clone(),
                    devices: c.devices,
                    interval: c.interval,
                    seed: c.seed,
                };
                (tokio::spawn(plant.run(tx, stats, shutdown.clone())), None)
            }
            (SourceSpec::Mqtt(_), None) => return,
        };
        self.sources.insert(
            spec.name().to_string(),
            Running {
                config: spec,
                task,
                stop: StopHandle::Source(shutdown),
                stage,
            },
        );
    }

    async fn stop<C>(health: &Health, running: Running<C>, what: &str) {
        match &running.stop {
            StopHandle::Source(token) => token.cancel(),
            // At once: the batch in flight is abandoned and stays in the store.
            StopHandle::Uplink(signals) => signals.stop.cancel(),
        }
        if tokio::time::timeout(SOURCE_STOP_GRACE, running.task)
            .await
            .is_err()
        {
            log::warn!("{what} did not stop within {SOURCE_STOP_GRACE:?}");
        }
        if let Some(stage) = &running.stage {
            health.remove(stage);
        }
    }

    /// Applies a new config's sources and uplinks. Builds everything new first: if one
    /// fails to build, nothing changes.
    pub async fn apply(&mut self, shared: &Shared, config: &Config) -> Result<Changes, AppError> {
        let mut changes = Changes::default();
        let wanted_sources = SourceSpec::all(config);
        let wanted_uplinks = &config.uplinks;
        let new_sources: Vec<(SourceSpec, Option<MqttSource>)> = wanted_sources
            .iter()
            .filter(|s| self.sources.get(s.name()).is_none_or(|r| r.config != **s))
            .map(|s| Ok((s.clone(), build_source(s, config)?)))
            .collect::<Result<_, AppError>>()?;
        let new_uplinks: Vec<(UplinkConfig, BuiltSink)> = wanted_uplinks
            .iter()
            .filter(|u| self.uplinks.get(&u.name).is_none_or(|r| r.config != **u))
            .map(|u| Ok((u.clone(), build_sink(&shared.gateway_id, u)?)))
            .collect::<Result<_, AppError>>()?;

        let gone_sources: Vec<String> = self
            .sources
            .keys()
            .filter(|name| !wanted_sources.iter().any(|s| s.name() == name.as_str()))
            .cloned()
            .collect();
        for name in gone_sources {
            if let Some(running) = self.sources.remove(&name) {
                Self::stop(&shared.health, running, &format!("source {name}")).await;
                changes.stopped.push(format!("source {name}"));
            }
        }
        let gone_uplinks: Vec<String> = self
            .uplinks
            .keys()
            .filter(|name| !wanted_uplinks.iter().any(|u| &u.name == *name))
            .cloned()
            .collect();
        for name in gone_uplinks {
            if let Some(running) = self.uplinks.remove(&name) {
                Self::stop(&shared.health, running, &format!("uplink {name}")).await;
                let store = shared.store.clone();
                let n = name.clone();
                match tokio::task::spawn_blocking(move || store.remove_uplink(&n)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => log::error!("uplink {name}: cannot drop its cursor: {e}"),
                    Err(e) => log::error!("uplink {name}: cannot drop its cursor: {e}"),
                }
                changes.stopped.push(format!("uplink {name}"));
            }
        }
        for (u, sink) in new_uplinks {
            let name = u.name.clone();
            if let Some(running) = self.uplinks.remove(&name) {
                Self::stop(&shared.health, running, &format!("uplink {name}")).await;
                changes.restarted.push(format!("uplink {name}"));
            } else {
                let store = shared.store.clone();
                let n = name.clone();
                match tokio::task::spawn_blocking(move || store.add_uplink(&n)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        log::error!("uplink {name}: cannot give it a cursor: {e}; not started");
                        continue;
                    }
                    Err(e) => {
                        log::error!("uplink {name}: cannot give it a cursor: {e}; not started");
                        continue;
                    }
                }
                changes.started.push(format!("uplink {name}"));
            }
            self.spawn_uplink(shared, u, sink);
        }
        for (spec, built) in new_sources {
            let name = spec.name().to_string();
            if let Some(running) = self.sources.remove(&name) {
                Self::stop(&shared.health, running, &format!("source {name}")).await;
                changes.restarted.push(format!("source {name}"));
            } else {
                changes.started.push(format!("source {name}"));
            }
            self.spawn_source(shared, spec, built);
        }
        Ok(changes)
    }

    /// Stops every source; returns once they have handed over what they had.
    pub async fn stop_sources(&mut self, health: &Health) {
        let sources = std::mem::take(&mut self.sources);
        for (name, running) in sources {
            Self::stop(health, running, &format!("source {name}")).await;
        }
    }

    /// Asks every uplink to send what is pending and stop; after `grace`, stops them.
    pub async fn drain_uplinks(&mut self, grace: Duration) {
        let uplinks = std::mem::take(&mut self.uplinks);
        let mut signals = Vec::new();
        let mut tasks = Vec::new();
        for (_, running) in uplinks {
            if let StopHandle::Uplink(s) = running.stop {
                s.drain.cancel();
                signals.push(s);
            }
            tasks.push(running.task);
        }
        let hard_stop = tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            for s in signals {
                s.stop.cancel();
            }
        });
        for task in tasks {
            let _ = task.await;
        }
        hard_stop.abort();
    }
}
