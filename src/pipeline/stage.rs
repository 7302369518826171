//! The enrichment stage between the sources and the store writer. It takes what the
//! sources sent (in order), feeds each sample to its device's window, scores the windows
//! that are ready — batched across devices, off the async threads — attaches the verdict
//! to the sample, adds an event record when a device goes into or out of the anomalous
//! state, and passes everything on in the same order (MQTT acknowledgements depend on it).
//!
//! A model that fails, or takes longer than its deadline, is switched off with an ERROR:
//! samples keep flowing unscored. Nothing here waits on anything but the writer.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::glob;
use super::model::LoadedModel;
use super::window::{BadValues, DeviceWindow, Pushed};
use crate::ops::Stats;
use crate::sample::{Anomaly, Sample, Value};
use crate::store::writer::Ingest;

/// Samples gathered into one pass (and at most one model run per binding).
const MAX_BATCH_SAMPLES: usize = 1024;
/// Runs of at most this many windows are made on the pipeline's own thread, and judged
/// against the deadline once they return (a tract run is bounded work: it ends). Larger
/// runs go to the blocking pool, where the deadline can cut the wait short.
const INLINE_WINDOWS: usize = 64;
/// A model run taking longer than this switches the binding off.
const INFERENCE_DEADLINE: Duration = Duration::from_secs(2);
/// Most devices one binding keeps windows for; more are passed on unscored (memory bound).
const MAX_DEVICES_PER_BINDING: usize = 10_000;

/// Where event records come from.
pub const EVENT_SOURCE: &str = "tidegate";

pub struct Binding {
    pub name: String,
    pub devices: Vec<String>,
    pub stride: usize,
    pub bad_values: BadValues,
    /// `None` once the model is switched off (or never loaded).
    pub model: Option<Arc<LoadedModel>>,
    windows: HashMap<String, DeviceWindow>,
    episodes: HashMap<String, Episode>,
    warned_full: bool,
}

/// An anomaly in progress on one device.
struct Episode {
    start_ts: i64,
    peak: f64,
}

impl Binding {
    pub fn new(
        name: String,
        devices: Vec<String>,
        stride: usize,
        bad_values: BadValues,
        model: Option<Arc<LoadedModel>>,
    ) -> Self {
        Binding {
            name,
            devices,
            stride: stride.max(1),
            bad_values,
            model,
            windows: HashMap::new(),
            episodes: HashMap::new(),
            warned_full: false,
        }
    }

    fn covers(&self, device: &str) -> bool {
        self.devices
            .iter()
            .any(|pattern| glob::matches(pattern, device))
    }
}

/// Where one window to score came from: (ingest index, sample index).
type Origin = (usize, usize);

/// A model re-read on SIGHUP, for the binding at this index. It has been loaded and
/// checked already: a model that fails to load never gets here.
pub type Reload = (usize, Arc<LoadedModel>);

/// Runs until the sources' channel closes. A pass gathers samples for up to `gather`
/// (see below) before its model run.
pub async fn run(
    mut bindings: Vec<Binding>,
    mut rx: mpsc::Receiver<Ingest>,
    tx: mpsc::Sender<Ingest>,
    stats: Arc<Stats>,
    mut reloads: mpsc::UnboundedReceiver<Reload>,
    stage: Arc<crate::ops::health::Stage>,
    gather: Duration,
) {
    // Kept from pass to pass, cleared, not freed: at a few thousand messages a second a
    // pass runs a hundred times a second, and growing these afresh each time was a tenth
    // of the stage's work (growing the windows' buffer also makes the allocator tidy its
    // free lists).
    let mut items: Vec<Ingest> = Vec::new();
    let mut wanted: Vec<(Vec<Origin>, Vec<f32>)> = Vec::new();
    let mut verdicts: HashMap<Origin, (usize, f32)> = HashMap::new();
    loop {
        let first = tokio::select! {
            item = rx.recv() => match item {
                Some(item) => item,
                None => break,
            },
            Some((index, model)) = reloads.recv() => {
                if let Some(binding) = bindings.get_mut(index) {
                    swap_model(binding, model);
                }
                continue;
            }
        };
        let mut count = first.samples.len();
        let mut commit_now = first.commit_now;
        items.push(first);
        // With a model to run, what arrives within `gather` joins this pass while it holds
        // fewer than INLINE_WINDOWS samples (past that a batch gains little): a pass has a
        // fixed cost (the model run's set-up, a wake-up of each stage after it) that a
        // batch shares.
        let gather_until = bindings
            .iter()
            .any(|b| b.model.is_some())
            .then(|| tokio::time::Instant::now() + gather);
        while count < MAX_BATCH_SAMPLES {
            let item = match rx.try_recv() {
                Ok(item) => item,
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    // A sender waiting on this commit sends nothing more meanwhile.
                    let Some(until) =
                        gather_until.filter(|_| count < INLINE_WINDOWS && !commit_now)
                    else {
                        break;
                    };
                    match tokio::time::timeout_at(until, rx.recv()).await {
                        Ok(Some(item)) => item,
                        Ok(None) | Err(_) => break,
                    }
                }
            };
            count += item.samples.len();
            commit_now |= item.commit_now;
            items.push(item);
        }

        // Windows: which samples get a score, and their windows, per binding.
        wanted.resize_with(bindings.len(), Default::default);
        for (origins, data) in &mut wanted {
            origins.clear();
            data.clear();
        }
        for (ii, item) in items.iter().enumerate() {
            for (si, sample) in item.samples.iter().enumerate() {
                let Some(bi) = bindings.iter().position(|b| b.covers(&sample.device)) else {
                    continue;
                };
                let binding = &mut bindings[bi];
                let Some(model) = &binding.model else {
                    continue;
                };
                let contract = &model.contract;
                // Looked up before inserting: `entry` would take a copy of the name each time.
                if !binding.windows.contains_key(&sample.device) {
                    if binding.windows.len() >= MAX_DEVICES_PER_BINDING {
                        if !binding.warned_full {
                            log::warn!(
                                "model {}: tracking {MAX_DEVICES_PER_BINDING} devices already; further devices are not scored",
                                binding.name
                            );
                            binding.warned_full = true;
                        }
                        continue;
                    }
                    binding.windows.insert(
                        sample.device.clone(),
                        DeviceWindow::new(contract.channels.len(), contract.window),
                    );
                }
                let window = binding
                    .windows
                    .get_mut(&sample.device)
                    .expect("inserted above");
                match window.push(
                    sample,
                    &contract.channels,
                    contract.window,
                    binding.stride,
                    binding.bad_values,
                ) {
                    Pushed::Added { ready: true } => {
                        let (origins, data) = &mut wanted[bi];
                        origins.push((ii, si));
                        window.flatten_into(data);
                    }
                    Pushed::Added { ready: false } => {}
                    Pushed::Skipped(_) | Pushed::Reset(_) => {
                        Stats::add(&stats.inference_skipped, 1)
                    }
                }
            }
        }

        // Scores, one model run per binding, off the async threads.
        verdicts.clear();
        for (bi, (origins, data)) in wanted.iter_mut().enumerate() {
            if origins.is_empty() {
                continue;
            }
            let Some(model) = bindings[bi].model.clone() else {
                continue;
            };
            let count = origins.len();
            let _busy = stage.busy();
            let outcome = if count <= INLINE_WINDOWS {
                // A few windows score in tens of microseconds: handing them to another
                // thread and back would cost more than the run (two wake-ups a pass).
                let started = std::time::Instant::now();
                let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    model.normalise(data);
                    model.score(data, count)
                }));
                match run {
                    Err(_) => Err("the model run panicked".to_string()),
                    Ok(_) if started.elapsed() > INFERENCE_DEADLINE => {
                        Err(format!("a run took longer than {INFERENCE_DEADLINE:?}"))
                    }
                    Ok(scores) => Ok(scores),
                }
            } else {
                let mut data = std::mem::take(data);
                let run = tokio::task::spawn_blocking(move || {
                    model.normalise(&mut data);
                    model.score(&data, count)
                });
                match tokio::time::timeout(INFERENCE_DEADLINE, run).await {
                    Ok(Ok(scores)) => Ok(scores),
                    Ok(Err(e)) => Err(format!("the model run panicked: {e}")),
                    Err(_) => Err(format!("a run took longer than {INFERENCE_DEADLINE:?}")),
                }
            };
            let failure = match outcome {
                Ok(Ok(scores)) if scores.iter().all(|s| s.is_finite()) => {
                    Stats::add(&stats.inference_windows, count as u64);
                    Stats::add(&stats.inference_batches, 1);
                    for (&origin, score) in origins.iter().zip(scores) {
                        verdicts.insert(origin, (bi, score));
                    }
                    None
                }
                Ok(Ok(_)) => {
                    Some("the model returned a score that is not a finite number".to_string())
                }
                Ok(Err(e)) => Some(e.to_string()),
                Err(reason) => Some(reason),
            };
            if let Some(reason) = failure {
                Stats::add(&stats.inference_failures, 1);
                log::error!(
                    "model {}: {reason}; scoring switched off for this binding, raw data keeps flowing",
                    bindings[bi].name
                );
                bindings[bi].model = None;
            }
        }

        // Verdicts onto the samples, events after them, everything on in order.
        for (ii, mut item) in items.drain(..).enumerate() {
            if !verdicts.is_empty() {
                // Events are rare: the samples are scored where they lie, and an event is
                // put in after its sample once the pass is through them.
                let mut events: Vec<(usize, Sample)> = Vec::new();
                for (si, sample) in item.samples.iter_mut().enumerate() {
                    let event = verdicts.get(&(ii, si)).and_then(|&(bi, score)| {
                        let binding = &mut bindings[bi];
                        let model = binding.model.as_ref()?;
                        let contract = &model.contract;
                        let score = f64::from(score);
                        let is_anomaly = score > contract.threshold;
                        sample.anomaly = Some(Anomaly {
                            score,
                            threshold: contract.threshold,
                            is_anomaly,
                            model: contract.name.clone(),
                            version: contract.version.clone(),
                        });
                        transition(binding, sample, score, is_anomaly, &stats)
                    });
                    if let Some(event) = event {
                        events.push((si + 1, event));
                    }
                }
                // From the back, so that the positions before each insertion still hold.
                for (at, event) in events.into_iter().rev() {
                    item.samples.insert(at, event);
                }
            }
            if tx.send(item).await.is_err() {
                return;
            }
        }
    }
}

/// Puts a re-read model in place. Windows are kept when the new model reads the same
/// channels over the same window, and started over when it does not.
fn swap_model(binding: &mut Binding, model: Arc<LoadedModel>) {
    let same_shape = binding.model.as_ref().is_some_and(|old| {
        old.contract.channels == model.contract.channels
            && old.contract.window == model.contract.window
    });
    if !same_shape {
        binding.windows.clear();
        binding.episodes.clear();
    }
    log::info!(
        "model {}: now scoring with {} {} (threshold {:.4}){}",
        binding.name,
        model.contract.name,
        model.contract.version,
        model.contract.threshold,
        if same_shape {
            ""
        } else {
            "; windows start over"
        }
    );
    binding.model = Some(model);
}

/// An event record when a device enters or leaves the anomalous state.
fn transition(
    binding: &mut Binding,
    sample: &Sample,
    score: f64,
    is_anomaly: bool,
    stats: &Stats,
) -> Option<Sample> {
    let model = binding.model.as_ref()?;
    let contract = &model.contract;
    let device = &sample.device;
    let mut event = Sample::new(EVENT_SOURCE, device, sample.ts);
    event
        .fields
        .insert("model".into(), Value::Text(contract.name.to_string()));
    event
        .fields
        .insert("threshold".into(), Value::Float(contract.threshold));
    match (binding.episodes.get_mut(device), is_anomaly) {
        (None, true) => {
            binding.episodes.insert(
                device.clone(),
                Episode {
                    start_ts: sample.ts,
                    peak: score,
                },
            );
            Stats::add(&stats.anomaly_events, 1);
            log::warn!(
                "anomaly: {device} scored {score:.3} by model {} (threshold {:.3})",
                contract.name,
                contract.threshold
            );
            event
                .fields
                .insert("event".into(), Value::Text("anomaly_start".into()));
            event.fields.insert("score".into(), Value::Float(score));
            Some(event)
        }
        (Some(episode), true) => {
            episode.peak = episode.peak.max(score);
            None
        }
        (Some(_), false) => {
            let episode = binding.episodes.remove(device)?;
            log::info!(
                "anomaly over: {device} back below the threshold of model {} after {:.1} s (peak score {:.3})",
                contract.name,
                (sample.ts - episode.start_ts) as f64 / 1000.0,
                episode.peak
            );
            event
                .fields
                .insert("event".into(), Value::Text("anomaly_end".into()));
            event
                .fields
                .insert("start_ts".into(), Value::Int(episode.start_ts));
            event.fields.insert("end_ts".into(), Value::Int(sample.ts));
            event
                .fields
                .insert("peak_score".into(), Value::Float(episode.peak));
            Some(event)
        }
        (None, false) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::contract::Overrides;
    use crate::pipeline::model;

    /// A sample of `device` with every channel the model reads.
    fn reading(device: &str, ts: i64, channels: &[String]) -> Sample {
        let mut sample = Sample::new("plant", device, ts);
        for (i, channel) in channels.iter().enumerate() {
            sample
                .fields
                .insert(channel.as_str().into(), Value::Float(1.0 + i as f64));
        }
        sample
    }

    /// The bundled pump model bound to every device, stride 1, with its threshold at -1
    /// (every score is an anomaly); with the channels it reads and its window length.
    fn pump_binding() -> (Binding, Vec<String>, usize) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/pump-demo.onnx");
        let overrides = Overrides {
            threshold: Some(-1.0),
            ..Overrides::default()
        };
        let loaded = Arc::new(model::load(&path, &overrides, "pumps").unwrap());
        let channels = loaded.contract.channels.clone();
        let window = loaded.contract.window;
        let binding = Binding::new(
            "pumps".into(),
            vec!["*".into()],
            1,
            BadValues::Skip,
            Some(loaded),
        );
        (binding, channels, window)
    }

    /// The stage running `binding`, gathering for `gather`: its input, its output, its
    /// counters and its task (which ends once the input is dropped).
    fn start(
        binding: Binding,
        gather: Duration,
    ) -> (
        mpsc::Sender<Ingest>,
        mpsc::Receiver<Ingest>,
        Arc<Stats>,
        tokio::task::JoinHandle<()>,
    ) {
        let (in_tx, in_rx) = mpsc::channel(8);
        let (out_tx, out_rx) = mpsc::channel(8);
        // No reloads: a closed reload channel is never taken.
        let (_, reload_rx) = mpsc::unbounded_channel();
        let stats = Arc::new(Stats::default());
        let health = crate::ops::health::Health::from_env();
        let stage = health.stage("pipeline", Duration::from_secs(5));
        let task = tokio::spawn(run(
            vec![binding],
            in_rx,
            out_tx,
            stats.clone(),
            reload_rx,
            stage,
            gather,
        ));
        (in_tx, out_rx, stats, task)
    }

    /// Every scored sample is over a threshold of -1, so each device's first score starts
    /// an episode: its event must follow that very sample, also when several samples of
    /// one message start episodes.
    #[tokio::test]
    async fn each_event_follows_the_sample_that_started_it() {
        let (binding, channels, window) = pump_binding();
        // Devices a and b interleaved in one message: the last pair fills both windows.
        let mut samples = Vec::new();
        for t in 0..window as i64 {
            samples.push(reading("a", t, &channels));
            samples.push(reading("b", t, &channels));
        }
        let (in_tx, mut out_rx, stats, task) = start(binding, Duration::from_millis(5));
        in_tx.send(Ingest::new(samples)).await.unwrap();
        drop(in_tx);
        let out = out_rx.recv().await.expect("the message is passed on");
        task.await.unwrap();

        let order: Vec<(String, bool, String)> = out
            .samples
            .iter()
            .map(|s| {
                (
                    s.device.clone(),
                    s.anomaly.as_ref().is_some_and(|a| a.is_anomaly),
                    s.fields
                        .get("event")
                        .map(|v| v.to_string())
                        .unwrap_or_default(),
                )
            })
            .collect();
        let tail = &order[order.len() - 4..];
        assert_eq!(
            tail,
            [
                ("a".to_string(), true, String::new()),
                ("a".to_string(), false, "\"anomaly_start\"".to_string()),
                ("b".to_string(), true, String::new()),
                ("b".to_string(), false, "\"anomaly_start\"".to_string()),
            ],
            "{order:?}"
        );
        assert_eq!(out.samples.len(), 2 * window + 2);
        assert_eq!(Stats::get(&stats.anomaly_events), 2);
        let verdict = out.samples[out.samples.len() - 2].anomaly.as_ref().unwrap();
        assert_eq!((&*verdict.model, &*verdict.version), ("pump-demo", "1"));
    }

    /// What arrives while a pass gathers shares its model run, however late within
    /// `gather`; a message that fills an MQTT window ends the gathering at once (with an
    /// hour to gather, this test would otherwise wait out the hour).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pass_gathers_until_a_message_that_fills_a_window() {
        let (binding, channels, window) = pump_binding();
        let (in_tx, mut out_rx, stats, task) = start(binding, Duration::from_secs(3600));
        // A full window, then one sample more, then one more that fills the window: three
        // windows to score.
        let first: Vec<Sample> = (0..window as i64)
            .map(|t| reading("a", t, &channels))
            .collect();
        in_tx.send(Ingest::new(first)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        in_tx
            .send(Ingest::new(vec![reading("a", window as i64, &channels)]))
            .await
            .unwrap();
        let mut last = Ingest::new(vec![reading("a", window as i64 + 1, &channels)]);
        last.commit_now = true;
        in_tx.send(last).await.unwrap();

        for _ in 0..3 {
            tokio::time::timeout(Duration::from_secs(60), out_rx.recv())
                .await
                .expect("the pass ended for the message that fills the window")
                .expect("the message is passed on");
        }
        assert_eq!(Stats::get(&stats.inference_batches), 1);
        assert_eq!(Stats::get(&stats.inference_windows), 3);
        drop(in_tx);
        task.await.unwrap();
    }
}
