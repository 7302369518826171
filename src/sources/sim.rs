//! A simulated plant for `tidegate demo`: a few pumps whose flow, pressure, temperature
//! and vibration drift realistically, with an occasional fault (a bearing starting to
//! fail raises vibration and temperature for a while). Its samples go through the real
//! writer, store and uplinks.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::ops::Stats;
use crate::sample::{Sample, Value, now_ms};
use crate::store::writer::Ingest;

pub struct SimulatedPlant {
    pub source: String,
    pub devices: usize,
    pub interval: Duration,
    pub seed: u64,
}

struct Pump {
    name: String,
    phase: f64,
    base_flow: f64,
    temperature: f64,
    fault_left: u32,
}

impl SimulatedPlant {
    pub async fn run(
        self,
        tx: mpsc::Sender<Ingest>,
        stats: Arc<Stats>,
        shutdown: CancellationToken,
    ) {
        let mut rng = fastrand::Rng::with_seed(self.seed);
        let mut pumps: Vec<Pump> = (0..self.devices)
            .map(|i| Pump {
                name: format!("pump-{}", i + 1),
                phase: rng.f64() * std::f64::consts::TAU,
                base_flow: 30.0 + 10.0 * rng.f64(),
                temperature: 45.0 + 5.0 * rng.f64(),
                fault_left: 0,
            })
            .collect();
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut step: u64 = 0;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.cancelled() => break,
            }
            step += 1;
            let ts = now_ms();
            let mut samples = Vec::with_capacity(pumps.len());
            for pump in &mut pumps {
                if pump.fault_left == 0 && rng.f64() < 0.01 {
                    pump.fault_left = 20 + rng.u32(0..20);
                    log::info!("demo plant: {} develops a bearing fault", pump.name);
                }
                let faulty = pump.fault_left > 0;
                pump.fault_left = pump.fault_left.saturating_sub(1);
                let t = step as f64 * 0.05 + pump.phase;
                let flow = pump.base_flow + 2.0 * t.sin() + rng.f64() - 0.5;
                let pressure = 4.0 + 0.03 * flow + 0.05 * (rng.f64() - 0.5);
                let target_temp = if faulty { 70.0 } else { 48.0 + 0.1 * flow };
                pump.temperature +=
                    0.1 * (target_temp - pump.temperature) + 0.1 * (rng.f64() - 0.5);
                let vibration = if faulty {
                    7.0 + 3.0 * rng.f64()
                } else {
                    1.8 + 0.4 * rng.f64()
                };
                let mut sample = Sample::new(&self.source, &pump.name, ts);
                sample
                    .fields
                    .insert("flow_m3h".into(), Value::Float(round3(flow)));
                sample
                    .fields
                    .insert("pressure_bar".into(), Value::Float(round3(pressure)));
                sample.fields.insert(
                    "temperature_c".into(),
                    Value::Float(round3(pump.temperature)),
                );
                sample
                    .fields
                    .insert("vibration_mm_s".into(), Value::Float(round3(vibration)));
                sample.fields.insert("running".into(), Value::Bool(true));
                sample
                    .fields
                    .insert("mode".into(), Value::Text("auto".into()));
                samples.push(sample);
            }
            Stats::add(&stats.samples_in, samples.len() as u64);
            tokio::select! {
                sent = tx.send(Ingest::new(samples)) => if sent.is_err() { break },
                _ = shutdown.cancelled() => break,
            }
        }
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
