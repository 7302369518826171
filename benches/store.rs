//! The store's figures (issue: store-and-forward): durable append rate with group
//! commit, disk bytes per live byte under churn, start-up time with a large backlog, and
//! the drain rate after an outage while live data keeps flowing (the real daemon, a
//! simulated plant and a local HTTP receiver).
//!
//! Run: `cargo bench --bench store` (`TG_ONLY=drain` for one part). Sizes: `TG_APPEND=200000`, `TG_CHURN=2000000`,
//! `TG_BACKLOG=1000000`, `TG_OUTAGE_S=60`. Files go to `TG_BENCH_DIR` (default: a
//! temporary directory under /var/tmp, on disk rather than tmpfs).

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::*;
use tidegate::config::FullPolicy;
use tidegate::sample::{Sample, Value};
use tidegate::store::{Lane, LogStore, Store, StoreOptions};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A sample like a Modbus poll or an MQTT message: eight numeric channels.
fn sample(i: u64) -> Sample {
    let mut s = Sample::new(
        "plant",
        format!("pump-{}", i % 1000),
        1_764_340_000_000 + i as i64,
    );
    for (k, name) in [
        "flow_m3h",
        "pressure_bar",
        "temperature_c",
        "vibration_mm_s",
        "current_a",
        "speed_hz",
        "power_kw",
        "energy_kwh",
    ]
    .iter()
    .enumerate()
    {
        s.fields.insert(
            (*name).into(),
            Value::Float((i % 97) as f64 * 0.37 + k as f64),
        );
    }
    s
}

fn dir_bytes(path: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(path) {
        for e in entries.flatten() {
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                total += dir_bytes(&e.path());
            } else {
                total += meta.len();
            }
        }
    }
    total
}

fn open(dir: &Path) -> LogStore {
    LogStore::open(
        dir,
        &["cloud".to_string()],
        StoreOptions::new(8 << 30, FullPolicy::DropOldest),
    )
    .unwrap()
}

fn appends(base: &Path) {
    let n = env_or("TG_APPEND", 200_000) as u64;
    println!("## Durable appends (fsync mode, fdatasync per commit)\n");
    println!("| samples per commit | records/s | commits/s |");
    println!("|---|---|---|");
    for batch in [1u64, 16, 64, 256, 2048] {
        let dir = base.join(format!("append-{batch}"));
        let store = open(&dir);
        let total = if batch == 1 { n / 20 } else { n };
        let started = Instant::now();
        let mut i = 0;
        while i < total {
            let entries: Vec<(Lane, Sample)> =
                (i..i + batch).map(|k| (Lane::Main, sample(k))).collect();
            store.append(&entries, true).unwrap();
            i += batch;
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "| {batch} | {:.0} | {:.0} |",
            total as f64 / secs,
            (total / batch) as f64 / secs
        );
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
    println!();
}

fn churn(base: &Path) {
    let n = env_or("TG_CHURN", 2_000_000) as u64;
    let lag = 200_000u64;
    let dir = base.join("churn");
    let store = open(&dir);
    println!("## Churn: appends = deliveries, {lag} records always waiting\n");
    println!("| appended | live bytes | disk bytes | disk / live |");
    println!("|---|---|---|---|");
    let mut appended = 0u64;
    let mut worst: f64 = 0.0;
    let mut acked = 0u64;
    while appended < n {
        let entries: Vec<(Lane, Sample)> = (appended..appended + 512)
            .map(|k| (Lane::Main, sample(k)))
            .collect();
        store.append(&entries, true).unwrap();
        appended += 512;
        while appended.saturating_sub(acked) > lag {
            let batch = store.read("cloud", 500).unwrap().unwrap();
            acked += batch.records.len() as u64;
            store.ack("cloud", batch.lane, batch.through).unwrap();
        }
        if appended.is_multiple_of(32_768) {
            store.checkpoint().unwrap();
        }
        if appended % (n / 8).max(512) < 512 && appended > lag * 2 {
            store.checkpoint().unwrap();
            let live = store.stats().unwrap().bytes;
            let disk = dir_bytes(&dir);
            let ratio = disk as f64 / live as f64;
            worst = worst.max(ratio);
            println!("| {appended} | {live} | {disk} | {ratio:.2} |");
        }
    }
    println!("\nworst disk/live ratio {worst:.2}\n");
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

fn startup(base: &Path) {
    let n = env_or("TG_BACKLOG", 1_000_000) as u64;
    let dir = base.join("backlog");
    {
        let store = open(&dir);
        let mut i = 0;
        while i < n {
            let entries: Vec<(Lane, Sample)> =
                (i..i + 4096).map(|k| (Lane::Main, sample(k))).collect();
            store.append(&entries, false).unwrap();
            i += 4096;
        }
        store.checkpoint().unwrap();
    }
    let disk = dir_bytes(&dir);
    let started = Instant::now();
    let store = open(&dir);
    let warm = started.elapsed();
    let records = store.stats().unwrap().records;
    drop(store);
    // Cold: the page cache dropped, as after a reboot (needs root; skipped otherwise).
    let _ = std::process::Command::new("sync").status();
    let cold = std::fs::write("/proc/sys/vm/drop_caches", "3")
        .ok()
        .map(|_| {
            let started = Instant::now();
            let store = open(&dir);
            let t = started.elapsed();
            drop(store);
            t
        });
    println!("## Start-up with a backlog\n");
    println!(
        "{records} records ({:.0} MiB on disk): open (every frame checked) in {:?} with the files cached, {} after dropping the page cache\n",
        disk as f64 / (1 << 20) as f64,
        warm,
        cold.map(|t| format!("{t:?}"))
            .unwrap_or_else(|| "(not measured: needs root)".into())
    );
    let _ = std::fs::remove_dir_all(&dir);
}

async fn drain(base: &Path) {
    let outage = Duration::from_secs(env_or("TG_OUTAGE_S", 60) as u64);
    let dir = base.join("drain");
    std::fs::create_dir_all(&dir).unwrap();
    let backend = Backend::start(Box::new(|_| 503)).await;
    let config = write_sim_config(&dir, &backend.url, "");
    // 1,000 pumps every second: 1,000 samples/s of live data, as a mid-size plant.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("devices = 1", "devices = 1000")
        .replace("interval = \"20ms\"", "interval = \"1s\"")
        .replace("max_records = 10", "max_records = 2000")
        .replace("linger = \"100ms\"", "linger = \"1s\"");
    std::fs::write(&config, text).unwrap();
    let mut daemon = Daemon::start_at_level(&config, &dir.join("tidegate.log"), "info");
    tokio::time::sleep(outage).await;
    let backlog_at = |text: &str| -> u64 {
        text.lines()
            .rev()
            .find(|l| l.contains("summary:"))
            .and_then(|l| {
                l.split("lag ")
                    .nth(1)?
                    .split(';')
                    .next()?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    };
    let backlog = backlog_at(&daemon.log_text());
    let started = Instant::now();
    let committed_before = delivered_seqs(&backend).len();
    backend.set_script(Box::new(|_| 200));
    // Drained: the newest record delivered is less than 2 s old (the linger is 1 s).
    let mut live_latency = Vec::new();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let delivered = backend.delivered();
        if let Some(newest) = delivered.iter().map(|r| r["ts"].as_i64().unwrap()).max() {
            let age = tidegate::sample::now_ms() - newest;
            live_latency.push(age);
            if age < 2_000 && delivered.len() as u64 >= backlog {
                break;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "drain took over 10 minutes"
        );
    }
    let took = started.elapsed();
    let delivered = backend.delivered().len() - committed_before;
    let (cpu, rss) = process_usage(daemon.pid());
    assert_eq!(daemon.terminate(), Some(0));
    println!("## Drain after an outage, live data still flowing\n");
    println!(
        "outage {outage:?} at 1,000 samples/s: backlog {backlog} records; caught up in {took:.1?}: \
         {delivered} records delivered, {:.0} records/s ({:.1}x the ingest rate); daemon CPU {cpu:.1} s in all, peak RSS {} MiB\n",
        delivered as f64 / took.as_secs_f64(),
        delivered as f64 / took.as_secs_f64() / 1000.0,
        rss / 1024
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let base = match std::env::var("TG_BENCH_DIR") {
        Ok(dir) => std::path::PathBuf::from(dir),
        Err(_) => std::path::PathBuf::from("/var/tmp"),
    };
    let tmp = tempfile::tempdir_in(&base).unwrap();
    println!("# Store benchmark ({})\n", tmp.path().display());
    // TG_ONLY=drain (or appends, churn, startup) runs one part.
    let only = std::env::var("TG_ONLY").unwrap_or_default();
    let run = |part: &str| only.is_empty() || only == part;
    if run("appends") {
        appends(tmp.path());
    }
    if run("churn") {
        churn(tmp.path());
    }
    if run("startup") {
        startup(tmp.path());
    }
    if run("drain") {
        drain(tmp.path()).await;
    }
}
