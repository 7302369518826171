//! Inference cost. `cargo bench --bench inference` reports:
//! - windows scored per second by the bundled model through tract, at batch 1, 64, 1024;
//! - CPU seconds per 10k samples of the whole daemon (simulated plant, fsync store, file
//!   uplink) with the model scoring every sample, and without it.

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use support::*;
use tidegate::pipeline::{contract::Overrides, model};

fn model_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/pump-demo.onnx")
}

fn micro() {
    let loaded = model::load(&model_path(), &Overrides::default(), "bench").unwrap();
    let (w, c) = (loaded.contract.window, loaded.contract.channels.len());
    for batch in [1usize, 64, 1024] {
        let data: Vec<f32> = (0..batch * w * c)
            .map(|i| ((i % 17) as f32) * 0.1)
            .collect();
        let started = Instant::now();
        let mut windows = 0usize;
        while started.elapsed() < Duration::from_secs(2) {
            let scores = loaded.score(&data, batch).unwrap();
            windows += scores.len();
        }
        let rate = windows as f64 / started.elapsed().as_secs_f64();
        println!(
            "tract, {}: batch {batch:>4}: {rate:>12.0} windows/s ({:.2} µs per window)",
            loaded.contract.name,
            1e6 / rate
        );
    }
}

async fn pipeline(with_model: bool, devices: u64, seconds: u64) {
    let dir = tempfile::tempdir().unwrap();
    let models = if with_model {
        format!(
            "[[models]]\nname = \"pumps\"\npath = \"{}\"\ndevices = [\"pump-*\"]\n",
            model_path().display()
        )
    } else {
        String::new()
    };
    let config = dir.path().join("tidegate.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\nid = \"bench\"\nstate_dir = \"{}\"\n[log]\nsummary_interval = \"10s\"\n\
             [[sources.simulated]]\nname = \"plant\"\ndevices = {devices}\ninterval = \"100ms\"\n{models}\
             [[uplinks.file]]\nname = \"archive\"\npath = \"{}\"\nmax_records = 5000\n",
            dir.path().join("state").display(),
            dir.path().join("out.ndjson").display()
        ),
    )
    .unwrap();
    let mut daemon = Daemon::start_at_level(&config, &dir.path().join("tidegate.log"), "info");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = daemon.pid();
    let (cpu0, _) = process_usage(pid);
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let (cpu1, hwm) = process_usage(pid);
    assert_eq!(daemon.terminate(), Some(0));
    let samples = devices as f64 * 10.0 * seconds as f64;
    let log = daemon.log_text();
    let scored = log
        .lines()
        .rev()
        .find_map(|l| {
            l.split("scored ")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .unwrap_or(0);
    println!(
        "pipeline, {} samples/s, model {}: {:.3} CPU-s per 10k samples ({:.1}% of a core), peak RSS {:.1} MiB, {scored} windows scored",
        devices * 10,
        if with_model { "on " } else { "off" },
        (cpu1 - cpu0) / samples * 10_000.0,
        100.0 * (cpu1 - cpu0) / seconds as f64,
        hwm as f64 / 1024.0
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    micro();
    let devices = std::env::var("TG_DEVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let seconds = std::env::var("TG_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    pipeline(false, devices, seconds).await;
    pipeline(true, devices, seconds).await;
}
