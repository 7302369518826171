//! The store's policies with the real daemon: the priority lane, a full store under each
//! policy, a full disk (a real tmpfs), clock steps (the daemon's clock moved by
//! libfaketime), and `interval` durability under SIGKILL. Each test prints its figures.

mod support;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::modbus::{Devices, Unit, serve_tcp};
use support::*;
use tokio_util::sync::CancellationToken;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn stats(config: &Path) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_tidegate"))
        .args(["-c"])
        .arg(config)
        .args(["buffer", "stats", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn summaries(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.contains("summary:")).collect()
}

/// The `evicted N` figure of the last summary line.
fn last_evicted(log: &str) -> u64 {
    summaries(log)
        .last()
        .and_then(|l| l.rsplit("evicted ").next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anomaly_events_are_sent_before_the_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start(Box::new(|_| 503)).await;
    let config = write_test_config(
        dir.path(),
        &format!(
            r#"
[[sources.simulated]]
name = "plant"
devices = 4
interval = "20ms"
seed = 11

[[models]]
name = "pumps"
path = "{model}"
devices = ["pump-*"]

[[uplinks.http]]
name = "cloud"
url = "{url}"
max_records = 50
linger = "50ms"
backoff_min = "50ms"
backoff_max = "200ms"
"#,
            model = root().join("models/pump-demo.onnx").display(),
            url = backend.url
        ),
    );
    let mut daemon = Daemon::start(&config, &dir.path().join("tidegate.log"));
    wait_until(
        "anomaly events in the priority lane",
        Duration::from_secs(90),
        || {
            summaries(&daemon.log_text())
                .last()
                .is_some_and(|l| l.contains("in the priority lane"))
        },
    )
    .await;
    let before = stats(&config);
    let waiting_events = before["priority_records"].as_u64().unwrap();
    let backlog = before["records"].as_u64().unwrap();
    backend.set_script(Box::new(|_| 200));
    wait_until("the backlog delivered", Duration::from_secs(60), || {
        delivered_seqs(&backend).len() as u64 >= backlog
    })
    .await;
    assert_eq!(daemon.terminate(), Some(0));

    let delivered: Vec<Vec<serde_json::Value>> = backend
        .requests()
        .iter()
        .filter(|r| (200..300).contains(&r.status))
        .map(|r| r.records())
        .collect();
    let is_event = |r: &serde_json::Value| r["source"] == "tidegate";
    // The events that waited come before any of the backlog.
    let first_backlog = delivered
        .iter()
        .flatten()
        .position(|r| !is_event(r))
        .unwrap();
    let events_first = delivered
        .iter()
        .flatten()
        .take(first_backlog)
        .filter(|r| is_event(r))
        .count() as u64;
    eprintln!(
        "{backlog} records buffered, {waiting_events} of them anomaly events; \
         the first {events_first} delivered were events, then the backlog"
    );
    assert!(waiting_events > 0);
    assert!(events_first >= waiting_events);
    // Order by sequence number holds within each lane.
    for lane in [true, false] {
        let seqs: Vec<u64> = delivered
            .iter()
            .flatten()
            .filter(|r| is_event(r) == lane)
            .map(|r| r["seq"].as_u64().unwrap())
            .collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "lane order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_oldest_evicts_exactly_the_oldest_and_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start(Box::new(|_| 503)).await;
    let config = write_sim_config(
        dir.path(),
        &backend.url,
        "\n[store]\nmax_bytes = \"1MiB\"\nsegment_size = \"64KiB\"\n",
    );
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("devices = 1", "devices = 40");
    std::fs::write(&config, text).unwrap();
    let mut daemon = Daemon::start(&config, &dir.path().join("tidegate.log"));
    wait_until("evictions", Duration::from_secs(60), || {
        last_evicted(&daemon.log_text()) > 0
    })
    .await;
    assert_eq!(daemon.terminate(), Some(0));
    let full = stats(&config);
    let (evicted, records, last) = (
        full["evicted_total"].as_u64().unwrap(),
        full["records"].as_u64().unwrap(),
        full["last_seq"].as_u64().unwrap(),
    );
    let (bytes, disk) = (
        full["bytes"].as_u64().unwrap(),
        full["disk_bytes"].as_u64().unwrap(),
    );
    eprintln!(
        "1MiB store: {last} committed, {evicted} evicted, {records} kept ({bytes} bytes, {disk} on disk)"
    );
    assert!(evicted > 0);
    assert_eq!(
        records + evicted,
        last,
        "every record is kept or counted evicted"
    );
    assert!(bytes <= 1 << 20, "{bytes}");
    assert!(disk <= (1 << 20) + 2 * (64 << 10) + 4096, "{disk}");
    // What is delivered is exactly what was kept: the newest. (Restarted without the
    // plant, which would keep the store full and evict more.)
    backend.set_script(Box::new(|_| 200));
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "[[sources.simulated]]\nname = \"plant\"\ndevices = 40\ninterval = \"20ms\"",
        &format!(
            "[[sources.mqtt]]\nname = \"idle\"\nport = {}\n[[sources.mqtt.subscriptions]]\nfilter = \"none/#\"",
            free_port()
        ),
    );
    assert!(text.contains("idle"));
    std::fs::write(&config, text).unwrap();
    let mut daemon = Daemon::start(&config, &dir.path().join("tidegate.log"));
    wait_until(
        "the kept records delivered",
        Duration::from_secs(60),
        || delivered_seqs(&backend).contains(&last),
    )
    .await;
    assert_eq!(daemon.terminate(), Some(0));
    let delivered: HashSet<u64> = delivered_seqs(&backend)
        .into_iter()
        .filter(|s| *s <= last)
        .collect();
    let kept: HashSet<u64> = (evicted + 1..=last).collect();
    let missing = kept.difference(&delivered).count();
    let unexpected = delivered.difference(&kept).count();
    assert_eq!(
        (missing, unexpected),
        (0, 0),
        "delivered exactly the {} newest records",
        kept.len()
    );
}

/// A QoS 1 stream of `n` numbered messages with some padding.
async fn publish_stream(port: u16, n: usize) -> Publisher {
    let publisher = Publisher::connect(port, "stream").await;
    let pad = "p".repeat(200);
    for i in 0..n {
        publisher
            .publish(
                "plant/l1/pump-1/telemetry",
                format!("{{\"n\": {i}, \"pad\": \"{pad}\"}}"),
            )
            .await;
        if i % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    publisher.wait_acked(n).await;
    publisher
}

fn lost_of(backend: &Backend, n: usize) -> usize {
    let seen: HashSet<i64> = backend
        .delivered()
        .iter()
        .filter(|r| r["device"] == "pump-1")
        .filter_map(|r| r["fields"]["n"].as_i64())
        .collect();
    (0..n as i64).filter(|i| !seen.contains(i)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_policy_holds_mqtt_and_modbus_back_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mqtt = Mosquitto::start();
    let stop = CancellationToken::new();
    let mut unit = Unit::default();
    unit.set_holding(0, &[1, 2, 3, 4]);
    let modbus = serve_tcp(Devices::new(HashMap::from([(1, unit)])), stop.clone()).await;
    let backend = Backend::start(Box::new(|_| 503)).await;
    let config = write_config(
        dir.path(),
        mqtt.port,
        &backend.url,
        &format!(
            r#"
[store]
max_bytes = "1MiB"
full_policy = "block"
segment_size = "64KiB"

[[sources.modbus_tcp]]
name = "plc"
host = "127.0.0.1"
port = {port}

[[sources.modbus_tcp.devices]]
name = "meter-1"
unit = 1
poll_interval = "50ms"
points = [{{ name = "w0", address = "40001" }}]
"#,
            port = modbus.port()
        ),
    );
    let log = dir.path().join("tidegate.log");
    let mut daemon = Daemon::start(&config, &log);
    wait_until("the subscription", Duration::from_secs(20), || {
        daemon.log_text().contains("subscribed to")
    })
    .await;
    let n = 6000;
    let _publisher = publish_stream(mqtt.port, n).await;
    daemon
        .wait_log(
            "the store full and sources held back",
            Duration::from_secs(60),
            |text| text.contains("block policy") && text.contains("skipping polls"),
        )
        .await;
    // Held back for a while: the broker keeps what is not acknowledged.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let full = stats(&config);
    backend.set_script(Box::new(|_| 200));
    wait_until("every message delivered", Duration::from_secs(120), || {
        lost_of(&backend, n) == 0
    })
    .await;
    assert_eq!(daemon.terminate(), Some(0));
    let text = daemon.log_text();
    let skipped: u64 = summaries(&text)
        .last()
        .and_then(|l| {
            l.split(" store busy")
                .next()?
                .rsplit("/ ")
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0);
    eprintln!(
        "block policy, 1MiB store: {n} QoS 1 messages published, {} buffered at the bound ({} bytes), \
         lost {}, Modbus polls skipped while full {skipped}",
        full["records"],
        full["bytes"],
        lost_of(&backend, n)
    );
    assert!(
        full["bytes"].as_u64().unwrap() <= 2 << 20,
        "bounded, passed by one commit at most"
    );
    assert_eq!(full["evicted_total"], 0, "block never evicts");
    assert!(skipped > 0, "polls were skipped, counted");
    assert!(
        !text.contains("source local: connection lost"),
        "the MQTT connection stays up while held back"
    );
    stop.cancel();
}

/// A tmpfs of `size` mounted over `dir`, unmounted on drop.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(dir).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "the disk-full test mounts a small tmpfs and needs root (CI runs as root)"
        );
        SmallDisk(dir.to_path_buf())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_holds_sources_back_and_resumes_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    let _disk = SmallDisk::mount(&dir.path().join("state"), "2m");
    let mqtt = Mosquitto::start();
    let backend = Backend::start(Box::new(|_| 503)).await;
    let config = write_config(
        dir.path(),
        mqtt.port,
        &backend.url,
        "\n[store]\nsegment_size = \"128KiB\"\n",
    );
    let mut daemon = Daemon::start(&config, &dir.path().join("tidegate.log"));
    wait_until("the subscription", Duration::from_secs(20), || {
        daemon.log_text().contains("subscribed to")
    })
    .await;
    let n = 9000;
    let _publisher = publish_stream(mqtt.port, n).await;
    daemon
        .wait_log("the disk full", Duration::from_secs(60), |text| {
            text.contains("disk full")
        })
        .await;
    let held = stats(&config);
    backend.set_script(Box::new(|_| 200));
    daemon
        .wait_log("every message delivered", Duration::from_secs(120), |_| {
            lost_of(&backend, n) == 0
        })
        .await;
    assert!(daemon.is_running(), "a full disk never stops the daemon");
    assert_eq!(daemon.terminate(), Some(0));
    let text = daemon.log_text();
    eprintln!(
        "2MiB disk: {n} QoS 1 messages, {} buffered when the disk filled, lost {}, recovered: {}",
        held["records"],
        lost_of(&backend, n),
        text.contains("store commits again")
    );
    assert!(text.contains("store commits again"));
    assert_eq!(
        stats(&config)["damaged_total"],
        0,
        "no damage from the full disk"
    );
}

fn faketime_lib() -> PathBuf {
    let path = PathBuf::from("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1");
    assert!(
        path.exists(),
        "the clock-step test needs libfaketime (apt-get install faketime; .ci/run does)"
    );
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_steps_neither_reorder_nor_expire_records() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start(Box::new(|_| 503)).await;
    let config = write_sim_config(dir.path(), &backend.url, "\n[store]\nmax_age = \"1h\"\n");
    // The daemon's wall clock: a board booting in 1970, then NTP steps it to now, then
    // a correction steps it back a month. The monotonic clock is left alone, as a real
    // step leaves it.
    let clock = dir.path().join("faketime");
    std::fs::write(&clock, "@1970-01-01 00:00:00\n").unwrap();
    let log = dir.path().join("tidegate.log");
    let log_file = std::fs::File::create(&log).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tidegate"))
        .args(["run", "-c"])
        .arg(&config)
        .env("LD_PRELOAD", faketime_lib())
        .env("FAKETIME_TIMESTAMP_FILE", &clock)
        .env("FAKETIME_NO_CACHE", "1")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .env("TIDEGATE_LOG", "debug")
        .stderr(log_file)
        .spawn()
        .unwrap();
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until("ready", Duration::from_secs(20), || {
        read_log().contains("ready")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    std::fs::write(&clock, "+0\n").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    std::fs::write(&clock, "-30d\n").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    backend.set_script(Box::new(|_| 200));
    let last_before = stats(&config)["last_seq"].as_u64().unwrap();
    wait_until("everything delivered", Duration::from_secs(60), || {
        delivered_seqs(&backend).contains(&last_before)
    })
    .await;
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));

    let records = backend.delivered();
    let seqs: Vec<u64> = records.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    let ts: Vec<i64> = records.iter().map(|r| r["ts"].as_i64().unwrap()).collect();
    let in_1970 = ts.iter().filter(|t| **t < 86_400_000).count();
    let now = tidegate::sample::now_ms();
    let month_ago = ts
        .iter()
        .filter(|t| (now - **t - 30 * 86_400_000).abs() < 3_600_000)
        .count();
    let stats = stats(&config);
    eprintln!(
        "clock stepped 1970 -> now -> now - 30 days: {} records, {in_1970} stamped 1970, {month_ago} stamped a month back; \
         expired {}; delivered in sequence order: {}",
        records.len(),
        stats["expired_total"],
        seqs.windows(2).all(|w| w[0] < w[1])
    );
    assert!(in_1970 > 0 && month_ago > 0, "the steps happened");
    assert_eq!(
        stats["expired_total"], 0,
        "no mass expiry from a clock step"
    );
    let distinct: HashSet<u64> = seqs.iter().copied().collect();
    assert!(
        (1..=last_before).all(|s| distinct.contains(&s)),
        "nothing lost"
    );
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "order by sequence");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interval_durability_commits_and_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mqtt = Mosquitto::start();
    let backend = Backend::start(Box::new(|_| 503)).await;
    let config = write_config(
        dir.path(),
        mqtt.port,
        &backend.url,
        "\n[store]\ndurability = \"interval\"\nflush_interval = \"200ms\"\n",
    );
    let log = dir.path().join("tidegate.log");
    let mut daemon = Daemon::start(&config, &log);
    wait_until("the subscription", Duration::from_secs(20), || {
        daemon.log_text().contains("subscribed to")
    })
    .await;
    let n = 3000;
    let publisher = publish_stream(mqtt.port, n).await;
    for i in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        daemon.kill();
        daemon = Daemon::start(&config, &log);
        wait_until("ready again", Duration::from_secs(20), || {
            daemon.log_text().matches("INFO  ready").count() > i + 1
        })
        .await;
    }
    backend.set_script(Box::new(|_| 200));
    wait_until("every message delivered", Duration::from_secs(60), || {
        lost_of(&backend, n) == 0
    })
    .await;
    assert_eq!(daemon.terminate(), Some(0));
    drop(publisher);
    let delivered = backend.delivered().len();
    eprintln!(
        "interval durability: {n} QoS 1 messages, 3 SIGKILLs, lost {}, duplicates {}",
        lost_of(&backend, n),
        delivered - n
    );
}
