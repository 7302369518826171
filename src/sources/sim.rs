//! A simulated plant: pumps whose flow, pressure, temperature and vibration drift
//! realistically, with an occasional fault (a bearing starting to fail raises vibration
//! and temperature for a while). `[[sources.simulated]]` turns it straight into samples;
//! `tidegate demo` serves the same pumps as Modbus devices (see `modbus::sim`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::ops::Stats;
use crate::sample::{Sample, Value, now_ms};
use crate::store::writer::Ingest;

/// One pump's state and physics.
#[derive(Debug, Clone)]
pub struct Pump {
    pub name: String,
    phase: f64,
    base_flow: f64,
    step: u64,
    pub flow_m3h: f64,
    pub pressure_bar: f64,
    pub temperature_c: f64,
    pub vibration_mm_s: f64,
    pub rpm: u16,
    pub current_a: f64,
    pub running: bool,
    fault_left: u32,
}

impl Pump {
    pub fn new(index: usize, rng: &mut fastrand::Rng) -> Self {
        let base_flow = 30.0 + 10.0 * rng.f64();
        Pump {
            name: format!("pump-{}", index + 1),
            phase: rng.f64() * std::f64::consts::TAU,
            base_flow,
            step: 0,
            flow_m3h: 30.0,
            pressure_bar: 5.0,
            // Start warm, at the running temperature, not in a warm-up transient.
            temperature_c: 48.0 + 0.1 * base_flow,
            vibration_mm_s: 2.0,
            rpm: 1480,
            current_a: 12.0,
            running: true,
            fault_left: 0,
        }
    }

    /// Whether the pump is in a simulated fault right now.
    pub fn faulty(&self) -> bool {
        self.fault_left > 0
    }

    /// Advances one step (the demo steps once a second); `fault_chance` per step.
    pub fn step(&mut self, rng: &mut fastrand::Rng, fault_chance: f64) {
        self.step += 1;
        if self.fault_left == 0 && rng.f64() < fault_chance {
            self.fault_left = 20 + rng.u32(0..20);
            log::info!("simulated plant: {} develops a bearing fault", self.name);
        }
        let faulty = self.fault_left > 0;
        self.fault_left = self.fault_left.saturating_sub(1);
        let t = self.step as f64 * 0.05 + self.phase;
        self.flow_m3h = self.base_flow + 2.0 * t.sin() + rng.f64() - 0.5;
        self.pressure_bar = 4.0 + 0.03 * self.flow_m3h + 0.05 * (rng.f64() - 0.5);
        let target_temp = if faulty {
            70.0
        } else {
            48.0 + 0.1 * self.flow_m3h
        };
        self.temperature_c += 0.1 * (target_temp - self.temperature_c) + 0.1 * (rng.f64() - 0.5);
        self.vibration_mm_s = if faulty {
            7.0 + 3.0 * rng.f64()
        } else {
            1.8 + 0.4 * rng.f64()
        };
        self.rpm = (1480.0 + 4.0 * t.cos() + if faulty { -25.0 } else { 0.0 }) as u16;
        self.current_a =
            11.0 + 0.05 * self.flow_m3h + if faulty { 1.5 } else { 0.0 } + 0.1 * (rng.f64() - 0.5);
    }

    pub fn sample(&self, source: &str, ts: i64) -> Sample {
        let mut sample = Sample::new(source, &self.name, ts);
        let fields = [
            ("flow_m3h", self.flow_m3h),
            ("pressure_bar", self.pressure_bar),
            ("temperature_c", self.temperature_c),
            ("vibration_mm_s", self.vibration_mm_s),
            ("current_a", self.current_a),
        ];
        for (name, value) in fields {
            sample
                .fields
                .insert(name.into(), Value::Float(round3(value)));
        }
        sample
            .fields
            .insert("rpm".into(), Value::Int(i64::from(self.rpm)));
        sample
            .fields
            .insert("running".into(), Value::Bool(self.running));
        sample
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// `[[sources.simulated]]`: the pumps' readings as samples, one per pump per interval.
pub struct SimulatedPlant {
    pub source: String,
    pub devices: usize,
    pub interval: Duration,
    pub seed: u64,
}

impl SimulatedPlant {
    pub async fn run(
        self,
        tx: mpsc::Sender<Ingest>,
        stats: Arc<Stats>,
        shutdown: CancellationToken,
    ) {
        let mut rng = fastrand::Rng::with_seed(self.seed);
        let mut pumps: Vec<Pump> = (0..self.devices).map(|i| Pump::new(i, &mut rng)).collect();
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.cancelled() => break,
            }
            let ts = now_ms();
            let samples: Vec<Sample> = pumps
                .iter_mut()
                .map(|pump| {
                    pump.step(&mut rng, 0.01);
                    pump.sample(&self.source, ts)
                })
                .collect();
            Stats::add(&stats.samples_in, samples.len() as u64);
            tokio::select! {
                sent = tx.send(Ingest::new(samples)) => if sent.is_err() { break },
                _ = shutdown.cancelled() => break,
            }
        }
    }
}
