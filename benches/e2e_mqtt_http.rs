//! End-to-end throughput: a real mosquitto, the release `tidegate` binary, and a local HTTP
//! receiver. Publishes `TG_MESSAGES` QoS 1 messages (default 100000) from `TG_DEVICES`
//! devices (default 100) as fast as the broker takes them, and reports the time until the
//! receiver has every record, the rate, duplicates, and the daemon's CPU time and peak RSS.
//!
//! Run: `cargo bench --bench e2e_mqtt_http` (needs mosquitto installed).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::*;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let messages = env_or("TG_MESSAGES", 100_000);
    let devices = env_or("TG_DEVICES", 100).max(1);
    let dir = tempfile::tempdir().unwrap();
    let mqtt = Mosquitto::start();
    let backend = Backend::start(Box::new(|_| 200)).await;
    let config = write_config(dir.path(), mqtt.port, &backend.url, "");
    // Larger batches than the test default, as a production config would use.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("max_records = 50", "max_records = 1000")
        .replace("summary_interval = \"1s\"", "summary_interval = \"5s\"");
    std::fs::write(&config, text).unwrap();
    let mut daemon = Daemon::start_at_level(&config, &dir.path().join("tidegate.log"), "info");
    wait_until("the daemon to subscribe", Duration::from_secs(20), || {
        daemon.log_text().contains("subscribed to")
    })
    .await;
    let pid = daemon.pid();
    let (cpu_before, _) = process_usage(pid);

    let publisher = Publisher::connect(mqtt.port, "bench-publisher").await;
    let started = Instant::now();
    for n in 0..messages {
        let device = n % devices;
        let payload = format!(
            "{{\"ts\":{},\"n\":{n},\"flow\":{:.3},\"pressure\":{:.3},\"temp\":{:.2},\"vib\":{:.3},\"rpm\":{},\"running\":true,\"mode\":\"auto\"}}",
            1_790_000_000_000i64 + n as i64,
            10.0 + (n % 17) as f64 * 0.1,
            4.0 + (n % 13) as f64 * 0.01,
            40.0 + (n % 7) as f64,
            1.5 + (n % 5) as f64 * 0.1,
            1400 + n % 100
        );
        publisher
            .publish(&format!("plant/bench/dev-{device}/telemetry"), payload)
            .await;
    }
    let published_in = started.elapsed();
    wait_until(
        "every record at the receiver",
        Duration::from_secs(600),
        || backend.delivered().len() >= messages,
    )
    .await;
    let elapsed = started.elapsed();
    let (cpu_after, peak_rss_kib) = process_usage(pid);
    let delivered = backend.delivered();
    let distinct = distinct(&delivered);
    assert_eq!(daemon.terminate(), Some(0));

    let cpu = cpu_after - cpu_before;
    println!(
        "e2e MQTT -> tidegate (fsync store) -> HTTP, {messages} messages from {devices} devices"
    );
    println!(
        "  published in        {:>8.2} s",
        published_in.as_secs_f64()
    );
    println!("  all delivered after {:>8.2} s", elapsed.as_secs_f64());
    println!(
        "  throughput          {:>8.0} msg/s",
        messages as f64 / elapsed.as_secs_f64()
    );
    println!(
        "  delivered           {:>8} records ({} distinct, {} duplicates)",
        delivered.len(),
        distinct,
        delivered.len() - distinct
    );
    println!(
        "  daemon CPU          {:>8.2} s ({:.3} CPU-s per 10k messages)",
        cpu,
        cpu / messages as f64 * 10_000.0
    );
    println!(
        "  daemon peak RSS     {:>8.1} MiB",
        peak_rss_kib as f64 / 1024.0
    );
}
