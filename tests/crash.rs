//! Crash safety with real parts: the daemon is killed with SIGKILL at random instants while
//! a QoS 1 stream flows and the backend is down, then restarted, many times. Every message
//! the broker accepted must reach the backend once the backend is back. Also: a store
//! damaged on disk never stops the daemon from starting.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_instants_loses_nothing_the_broker_accepted() {
    let iterations: usize = std::env::var("TG_CRASH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let mqtt = Mosquitto::start();
    // Down for the whole crash phase: records pile up in the store and must survive.
    let backend = Backend::start(Box::new(|_| 503)).await;
    let config = write_config(dir.path(), mqtt.port, &backend.url, "");
    let log = dir.path().join("tidegate.log");
    let mut daemon = Daemon::start(&config, &log);
    wait_until("the first subscription", Duration::from_secs(20), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("subscribed to")
    })
    .await;

    // A steady QoS 1 stream from a separate task, numbered.
    let publisher = Publisher::connect(mqtt.port, "stream").await;
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let stream = tokio::spawn(async move {
        let mut n = 0usize;
        loop {
            if stop_rx.try_recv().is_ok() || n >= 200_000 {
                break;
            }
            publisher
                .publish("plant/l1/pump-1/telemetry", format!("{{\"n\": {n}}}"))
                .await;
            n += 1;
            if n.is_multiple_of(20) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        (publisher, n)
    });

    let mut rng = fastrand::Rng::with_seed(42);
    let mut restart_times = Vec::new();
    for i in 0..iterations {
        tokio::time::sleep(Duration::from_millis(rng.u64(100..700))).await;
        daemon.kill();
        let started = Instant::now();
        daemon = Daemon::start(&config, &log);
        wait_until("ready after a SIGKILL", Duration::from_secs(20), || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .matches("INFO  ready")
                .count()
                > i + 1
        })
        .await;
        restart_times.push(started.elapsed());
    }
    stop_tx.send(()).unwrap();
    let (publisher, published) = stream.await.unwrap();
    publisher.wait_acked(published).await;

    backend.set_script(Box::new(|_| 200));
    wait_until(
        "every accepted message at the backend",
        Duration::from_secs(120),
        || backend.delivered_count() >= published,
    )
    .await;
    assert_eq!(daemon.terminate(), Some(0));

    let delivered = backend.delivered();
    let mut seen: HashMap<i64, usize> = HashMap::new();
    for r in &delivered {
        *seen.entry(r["fields"]["n"].as_i64().unwrap()).or_default() += 1;
    }
    let lost = (0..published as i64)
        .filter(|n| !seen.contains_key(n))
        .count();
    let duplicates = delivered.len() - seen.len();
    restart_times.sort();
    eprintln!(
        "{iterations} SIGKILLs; {published} messages accepted by the broker; lost {lost}; \
         {duplicates} duplicates ({:.1} per crash); restart to ready: median {:?}, max {:?}",
        duplicates as f64 / iterations as f64,
        restart_times[restart_times.len() / 2],
        restart_times.last().unwrap()
    );
    assert_eq!(lost, 0);
}
