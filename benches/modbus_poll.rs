//! Modbus polling at scale, with the whole pipeline behind it (fsync store, file uplink).
//!
//! `cargo bench --bench modbus_poll` runs, on this machine:
//! - `TG_DEVICES` (default 1000) Modbus TCP devices, each its own connection, polled every
//!   `TG_INTERVAL_MS` (default 1000) for `TG_SECONDS` (default 30) — each poll reads
//!   HR 0–19, IR 0–19 and HR 100–109 (five f32), three requests;
//! - the same with `TG_DEAD_PERCENT` (default 10) of the devices never answering;
//! - an RS-485 line at 19,200 baud with 8 units, the same three reads per poll, as fast
//!   as the line allows (a pty with the wire time emulated by the test server), and the
//!   same line with one unit dead (1 s timeout): polls per second against the line's
//!   theoretical rate, computed from the frame sizes and the 3.5-character gaps
//!   (`TG_RTU_ONLY=1` runs only these; `TG_RTU_WARMUP` seconds before measuring, default
//!   10: the dead unit's breaker has opened, its probes are still close together;
//!   `TG_TCP_ONLY=1` runs only the first case, all TCP devices answering).
//!
//! `TG_BARE=1` runs, instead, the reference for the first case: a bare tokio-modbus
//! poller of the same devices, with none of the gateway's work (see `bare_poller`).
//!
//! `TG_WORKERS` and `TG_COMMIT_SPACING` set the daemon's `worker_threads` and
//! `store.commit_spacing`; `TG_DAEMON_BIN` runs another build of it.
//!
//! Reports polls completed, how many started within ±10% of their slot, CPU and peak RSS
//! of the daemon. The simulated devices run in this process, so their CPU is not counted.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::time::Duration;

use support::modbus::*;
use support::*;
use tokio_util::sync::CancellationToken;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What each simulated meter holds: HR 0–19, IR 0–19, five f32 at HR 100–109.
fn meter_unit() -> Unit {
    let mut unit = Unit::default();
    unit.set_holding(0, &(0..20).collect::<Vec<u16>>());
    unit.set_input(0, &(100..120).collect::<Vec<u16>>());
    for i in 0..5u16 {
        unit.set_holding(
            100 + i * 2,
            &encode(&(1.5f32 + f32::from(i)).to_be_bytes(), "ABCD"),
        );
    }
    unit
}

/// Adds the file uplink to the config `text`, starts the daemon on it; returns the daemon
/// and the file the records land in.
fn start_with_file_uplink(dir: &std::path::Path, mut text: String) -> (Daemon, std::path::PathBuf) {
    let out = dir.join("records.ndjson");
    let _ = write!(
        text,
        "[[uplinks.file]]\nname = \"archive\"\npath = \"{}\"\nmax_records = 5000\nlinger = \"1s\"\n",
        out.display()
    );
    let config = dir.join("tidegate.toml");
    std::fs::write(&config, text).unwrap();
    let daemon = Daemon::start_at_level(&config, &dir.join("tidegate.log"), "info");
    (daemon, out)
}

/// `TG_COMMIT_SPACING`: the store's `commit_spacing` (default: tidegate's own default).
fn commit_spacing() -> String {
    std::env::var("TG_COMMIT_SPACING")
        .map(|s| format!("commit_spacing = \"{s}\"\n"))
        .unwrap_or_default()
}

/// `TG_WORKERS`: the daemon's `gateway.worker_threads` (default: tidegate's own default).
fn workers() -> String {
    std::env::var("TG_WORKERS")
        .map(|w| format!("worker_threads = {w}\n"))
        .unwrap_or_default()
}

async fn run(devices: u64, dead_percent: u64, interval_ms: u64, seconds: u64) {
    let dir = tempfile::tempdir().unwrap();
    let unit = meter_unit();
    let mut dead = unit.clone();
    dead.silent = true;
    let stop = CancellationToken::new();
    let live_server = serve_tcp(Devices::new(HashMap::from([(1, unit)])), stop.clone()).await;
    let dead_server = serve_tcp(Devices::new(HashMap::from([(1, dead)])), stop.clone()).await;
    let dead_count = devices * dead_percent / 100;

    let mut text = format!(
        "[gateway]\nid = \"bench\"\nstate_dir = \"{}\"\n{}[log]\nsummary_interval = \"10s\"\n\
         [store]\ndurability = \"{}\"\n{}{}",
        dir.path().join("state").display(),
        workers(),
        std::env::var("TG_DURABILITY").unwrap_or_else(|_| "fsync".into()),
        commit_spacing(),
        meter_points()
    );
    for d in 0..devices {
        let port = if d < dead_count {
            dead_server.port()
        } else {
            live_server.port()
        };
        let _ = write!(
            text,
            "[[sources.modbus_tcp]]\nname = \"ep{d}\"\nhost = \"127.0.0.1\"\nport = {port}\n\
             [[sources.modbus_tcp.devices]]\nname = \"dev{d}\"\nprofile = \"meter\"\npoll_interval = \"{interval_ms}ms\"\ntimeout = \"1s\"\n"
        );
    }
    let (mut daemon, out) = start_with_file_uplink(dir.path(), text);
    // Warm-up: connections made, phases spread.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pid = daemon.pid();
    let (cpu0, _) = process_usage(pid);
    let t0 = sample_now_ms();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let t1 = sample_now_ms();
    let (cpu1, hwm) = process_usage(pid);
    let (anon, file) = rss_split(pid);
    assert_eq!(daemon.terminate(), Some(0));

    let records = read_ndjson(&out);
    // The file uplink delivers at least once: a record written twice shows here, by its
    // sequence number.
    let mut seqs: Vec<u64> = records.iter().filter_map(|r| r["seq"].as_u64()).collect();
    seqs.sort_unstable();
    let written = seqs.len();
    seqs.dedup();
    let duplicates = written - seqs.len();
    let mut by_device: BTreeMap<String, Vec<(i64, bool)>> = BTreeMap::new();
    for r in &records {
        let ts = r["ts"].as_i64().unwrap();
        if ts < t0 || ts >= t1 {
            continue;
        }
        let good = r.get("quality").is_none() && r.get("field_quality").is_none();
        by_device
            .entry(r["device"].as_str().unwrap().to_string())
            .or_default()
            .push((ts, good));
    }
    let live_devices = devices - dead_count;
    let expected = live_devices as f64 * (t1 - t0) as f64 / interval_ms as f64;
    let (mut completed, mut on_time, mut starts) = (0u64, 0u64, 0u64);
    for (name, polls) in &by_device {
        let index: u64 = name.trim_start_matches("dev").parse().unwrap();
        if index < dead_count {
            continue;
        }
        completed += polls.iter().filter(|(_, good)| *good).count() as u64;
        // Lateness against this device's own grid, anchored at its earliest start.
        let anchor = polls
            .iter()
            .map(|(ts, _)| ts.rem_euclid(interval_ms as i64))
            .min()
            .unwrap_or(0);
        for (ts, _) in polls {
            starts += 1;
            let offset = (ts - anchor).rem_euclid(interval_ms as i64);
            let deviation = offset.min(interval_ms as i64 - offset);
            if deviation as f64 <= interval_ms as f64 * 0.1 {
                on_time += 1;
            }
        }
    }
    let cpu = cpu1 - cpu0;
    let window = (t1 - t0) as f64 / 1000.0;
    println!(
        "modbus TCP: {devices} devices ({dead_count} dead) every {interval_ms} ms, {window:.0} s, 3 reads per poll, {} store + file uplink",
        std::env::var("TG_DURABILITY").unwrap_or_else(|_| "fsync".into())
    );
    println!(
        "  healthy polls completed {completed} of {expected:.0} expected ({:.2}%); {duplicates} records written twice",
        100.0 * completed as f64 / expected
    );
    println!(
        "  started within ±10% of the slot: {:.2}% of {starts}",
        100.0 * on_time as f64 / starts.max(1) as f64
    );
    println!(
        "  daemon CPU {:.1}% of one core ({cpu:.2} CPU-s), peak RSS {:.1} MiB; at the end {:.1} MiB anonymous + {:.1} MiB of binary and libraries",
        100.0 * cpu / window,
        hwm as f64 / 1024.0,
        anon as f64 / 1024.0,
        file as f64 / 1024.0
    );
    stop.cancel();
}

/// The meter profile of the TCP runs: HR 0–19, IR 0–19, HR 100–109 as five f32.
fn meter_points() -> String {
    let mut text = String::from("[profiles.meter]\npoints = [\n");
    for i in 0..20 {
        let _ = writeln!(
            text,
            "  {{ name = \"hr{i}\", address = {i}, table = \"holding\" }},"
        );
        let _ = writeln!(
            text,
            "  {{ name = \"ir{i}\", address = {i}, table = \"input\" }},"
        );
    }
    for i in 0..5 {
        let _ = writeln!(
            text,
            "  {{ name = \"f{i}\", address = {}, table = \"holding\", type = \"f32\" }},",
            100 + i * 2
        );
    }
    text.push_str("]\n");
    text
}

/// Bits on the wire for one poll of the meter at 8E1 (11 bits a character): three read
/// requests of 8 bytes, answers of 5 + 2n bytes, a 3.5-character silence after each of
/// the six frames.
fn rtu_poll_seconds(baud: u32) -> f64 {
    let bytes = 8.0 * 3.0 + (5.0 + 40.0) * 2.0 + (5.0 + 20.0);
    let gaps = 6.0 * 3.5;
    (bytes + gaps) * 11.0 / f64::from(baud)
}

async fn run_rtu(units: u8, dead: u8, seconds: u64) {
    let baud = 19_200;
    let dir = tempfile::tempdir().unwrap();
    let unit = meter_unit();
    let mut all = HashMap::new();
    for id in 1..=units {
        let mut u = unit.clone();
        u.silent = id <= dead;
        all.insert(id, u);
    }
    let pty = PtyPair::new(dir.path());
    let stop = CancellationToken::new();
    serve_rtu(Devices::new(all).with_wire_timing(baud), &pty, stop.clone());
    let mut text = format!(
        "[gateway]\nid = \"bench\"\nstate_dir = \"{}\"\n[log]\nsummary_interval = \"10s\"\n{}\
         [[sources.modbus_rtu]]\nname = \"line\"\ndevice = \"{}\"\nbaud = {baud}\nparity = \"even\"\n",
        dir.path().join("state").display(),
        meter_points(),
        pty.gateway_end.display()
    );
    // Asked for far more often than the line can carry: what comes out is the line's rate.
    for id in 1..=units {
        let _ = write!(
            text,
            "[[sources.modbus_rtu.devices]]\nname = \"unit{id}\"\nunit = {id}\nprofile = \"meter\"\npoll_interval = \"100ms\"\ntimeout = \"1s\"\n"
        );
    }
    let (mut daemon, out) = start_with_file_uplink(dir.path(), text);
    // Long enough for the dead unit's breaker to open (10 s); `TG_RTU_WARMUP=90` measures
    // the steady state, once its probes are a minute apart.
    tokio::time::sleep(Duration::from_secs(env_or("TG_RTU_WARMUP", 10))).await;
    let t0 = sample_now_ms();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let t1 = sample_now_ms();
    assert_eq!(daemon.terminate(), Some(0));
    let window = (t1 - t0) as f64 / 1000.0;
    let mut per_unit: BTreeMap<String, u64> = BTreeMap::new();
    for r in read_ndjson(&out) {
        let ts = r["ts"].as_i64().unwrap();
        if ts < t0 || ts >= t1 || r.get("quality").is_some() {
            continue;
        }
        *per_unit
            .entry(r["device"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    let healthy: u64 = per_unit.values().sum();
    let theoretical = 1.0 / rtu_poll_seconds(baud);
    println!(
        "modbus RTU at {baud} baud, {units} units ({dead} dead, 1 s timeout), 3 reads per poll, {window:.0} s after {} s of warm-up:",
        env_or("TG_RTU_WARMUP", 10)
    );
    println!(
        "  healthy polls {:.2}/s in all ({:.1}% of the line's theoretical {theoretical:.1}/s); per unit: {}",
        healthy as f64 / window,
        100.0 * healthy as f64 / window / theoretical,
        per_unit
            .iter()
            .map(|(u, n)| format!("{u} {:.2}", *n as f64 / window))
            .collect::<Vec<_>>()
            .join(", ")
    );
    stop.cancel();
}

fn sample_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// The reference the daemon's figures are read against, measured on the same machine at
/// the same moment: a bare tokio-modbus poller, one task and connection a device, the
/// same three reads a poll, each with a deadline, the devices spread evenly over the
/// interval (or, with `TG_BARE_PHASES=N`, over N points of it, as the daemon groups them
/// on ten); the answers are counted and dropped (no decoding, no samples, no store, no
/// uplink). It runs as a child process (`--bare-poller PORT DEVICES INTERVAL_MS PHASES`), so its
/// CPU and memory are its own, on a runtime of two worker threads as the daemon's, and
/// prints its completed polls every 100 ms.
async fn bare_poller(port: u16, devices: u64, interval_ms: u64, phases: u64) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio_modbus::prelude::Reader;
    let completed = Arc::new(AtomicU64::new(0));
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let interval = Duration::from_millis(interval_ms);
    for d in 0..devices {
        let completed = completed.clone();
        tokio::spawn(async move {
            let deadline = Duration::from_secs(1);
            // A thousand connections at once overflow the server's accept queue: try again,
            // as the daemon does.
            let mut ctx = loop {
                if let Ok(Ok(ctx)) = tokio::time::timeout(
                    deadline,
                    tokio_modbus::client::tcp::connect_slave(address, tokio_modbus::Slave(1)),
                )
                .await
                {
                    break ctx;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            let phase = if phases == 0 {
                d as f64 / devices as f64
            } else {
                (d % phases) as f64 / phases as f64
            };
            let first = tokio::time::Instant::now() + interval.mul_f64(phase);
            let mut ticks = tokio::time::interval_at(first, interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                ticks.tick().await;
                let hr = tokio::time::timeout(deadline, ctx.read_holding_registers(0, 20)).await;
                let ir = tokio::time::timeout(deadline, ctx.read_input_registers(0, 20)).await;
                let f = tokio::time::timeout(deadline, ctx.read_holding_registers(100, 10)).await;
                if matches!((hr, ir, f), (Ok(Ok(Ok(_))), Ok(Ok(Ok(_))), Ok(Ok(Ok(_))))) {
                    completed.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        println!("{}", completed.load(Ordering::Relaxed));
    }
}

/// Runs [`bare_poller`] against the same simulated meters as the daemon's first case.
async fn run_bare(devices: u64, interval_ms: u64, phases: u64, seconds: u64) {
    use std::io::BufRead;
    let stop = CancellationToken::new();
    let server = serve_tcp(
        Devices::new(HashMap::from([(1, meter_unit())])),
        stop.clone(),
    )
    .await;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--bare-poller",
            &server.port().to_string(),
            &devices.to_string(),
            &interval_ms.to_string(),
            &phases.to_string(),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let last = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let reader = {
        let last = last.clone();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if let Ok(n) = line.trim().parse() {
                    last.store(n, std::sync::atomic::Ordering::Relaxed);
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (cpu0, _) = process_usage(child.id());
    let polls0 = last.load(std::sync::atomic::Ordering::Relaxed);
    let t0 = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let (cpu1, hwm) = process_usage(child.id());
    let polls1 = last.load(std::sync::atomic::Ordering::Relaxed);
    let window = t0.elapsed().as_secs_f64();
    let (anon, file) = rss_split(child.id());
    let _ = child.kill();
    let _ = child.wait();
    let _ = reader.join();
    stop.cancel();
    let expected = devices as f64 * window * 1000.0 / interval_ms as f64;
    println!(
        "bare tokio-modbus poller (the reference: no samples, store or uplink): {devices} devices every {interval_ms} ms, {}, {window:.0} s",
        if phases == 0 {
            "spread evenly".to_string()
        } else {
            format!("on {phases} phase points")
        }
    );
    println!(
        "  polls completed {} of {expected:.0} expected ({:.2}%, counted to the nearest 100 ms)",
        polls1 - polls0,
        100.0 * (polls1 - polls0) as f64 / expected
    );
    println!(
        "  CPU {:.1}% of one core ({:.2} CPU-s), peak RSS {:.1} MiB; at the end {:.1} MiB anonymous + {:.1} MiB of binary and libraries",
        100.0 * (cpu1 - cpu0) / window,
        cpu1 - cpu0,
        hwm as f64 / 1024.0,
        anon as f64 / 1024.0,
        file as f64 / 1024.0
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    if args.get(1).map(String::as_str) == Some("--bare-poller") {
        let arg = |i: usize| {
            args[i]
                .parse::<u64>()
                .expect("--bare-poller PORT DEVICES INTERVAL_MS PHASES")
        };
        return bare_poller(arg(2) as u16, arg(3), arg(4), arg(5)).await;
    }
    let devices = env_or("TG_DEVICES", 1000);
    let interval = env_or("TG_INTERVAL_MS", 1000);
    let seconds = env_or("TG_SECONDS", 30);
    if env_or("TG_BARE", 0) == 1 {
        run_bare(devices, interval, env_or("TG_BARE_PHASES", 0), seconds).await;
        return;
    }
    if env_or("TG_RTU_ONLY", 0) == 0 {
        run(devices, 0, interval, seconds).await;
        if env_or("TG_TCP_ONLY", 0) == 1 {
            return;
        }
        run(devices, env_or("TG_DEAD_PERCENT", 10), interval, seconds).await;
    }
    run_rtu(8, 0, seconds).await;
    run_rtu(8, 1, seconds).await;
}
