//! The walking pipeline end to end, with real parts on loopback: a mosquitto broker, the
//! tidegate binary as a child process, and an HTTP backend.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use support::*;

fn telemetry(n: usize, device: &str) -> String {
    serde_json::json!({
        "ts": 1_790_000_000_000i64 + n as i64,
        "n": n,
        "flow": 10.5 + n as f64,
        "running": n.is_multiple_of(2),
        "mode": "auto",
        "motor": { "rpm": 1480, "temp": { "c": 61.25 } },
        "serial": format!("{device}-sn"),
    })
    .to_string()
}

async fn started(
    dir: &std::path::Path,
    mqtt: &Mosquitto,
    backend: &Backend,
    extra: &str,
) -> Daemon {
    let config = write_config(dir, mqtt.port, &backend.url, extra);
    let daemon = Daemon::start(&config, &dir.join("tidegate.log"));
    wait_until("the daemon to subscribe", Duration::from_secs(20), || {
        daemon
            .log_text()
            .contains("subscribed to plant/+/+/telemetry")
    })
    .await;
    daemon
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_arrive_with_every_field_in_order_with_an_idempotency_key() {
    let dir = tempfile::tempdir().unwrap();
    let mqtt = Mosquitto::start();
    let backend = Backend::start(Box::new(|_| 200)).await;
    let mut daemon = started(dir.path(), &mqtt, &backend, "").await;

    let publisher = Publisher::connect(mqtt.port, "device-sim").await;
    let devices = ["pump-1", "pump-2", "fan-1", "valve-9"];
    let per_device = 50;
    for n in 0..per_device {
        for device in devices {
            publisher
                .publish(
                    &format!("plant/line-a/{device}/telemetry"),
                    telemetry(n, device),
                )
                .await;
        }
    }
    publisher.wait_acked(per_device * devices.len()).await;
    wait_until(
        "every record at the backend",
        Duration::from_secs(30),
        || backend.delivered_count() == per_device * devices.len(),
    )
    .await;

    let records = backend.delivered();
    eprintln!(
        "delivered {} records in {} requests ({} distinct)",
        records.len(),
        backend.requests().len(),
        distinct(&records)
    );
    // Every payload field arrives, typed as sent, plus the topic's captured segment.
    let first = records
        .iter()
        .find(|r| r["device"] == "pump-2" && r["fields"]["n"] == 7)
        .unwrap();
    assert_eq!(first["source"], "local");
    assert_eq!(first["ts"], 1_790_000_000_007i64);
    let fields = &first["fields"];
    assert_eq!(fields["flow"], 17.5);
    assert_eq!(fields["running"], false);
    assert_eq!(fields["mode"], "auto");
    assert_eq!(fields["motor.rpm"], 1480);
    assert_eq!(fields["motor.temp.c"], 61.25);
    assert_eq!(fields["serial"], "pump-2-sn");
    assert_eq!(fields["line"], "line-a");
    assert_eq!(fields["ts"], 1_790_000_000_007i64);

    // In order per device, and sequence numbers strictly increasing overall.
    let mut per_device_n: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut last_seq = 0;
    for r in &records {
        let seq = r["seq"].as_u64().unwrap();
        assert!(
            seq > last_seq,
            "sequence numbers must increase: {seq} after {last_seq}"
        );
        last_seq = seq;
        per_device_n
            .entry(r["device"].as_str().unwrap().to_string())
            .or_default()
            .push(r["fields"]["n"].as_u64().unwrap());
    }
    for (device, ns) in &per_device_n {
        assert_eq!(
            ns,
            &(0..per_device as u64).collect::<Vec<_>>(),
            "order of {device}"
        );
    }

    // Every batch is gzip and carries gateway:first-last as its idempotency key.
    for request in backend.requests() {
        assert_eq!(request.content_encoding.as_deref(), Some("gzip"));
        let body = &request.body;
        assert_eq!(body["gateway"], "gw-test");
        let key = format!("gw-test:{}-{}", body["first_seq"], body["last_seq"]);
        assert_eq!(request.idempotency_key.as_deref(), Some(key.as_str()));
        assert_eq!(
            body["count"].as_u64().unwrap() as usize,
            request.records().len()
        );
    }
    assert_eq!(daemon.terminate(), Some(0), "SIGTERM exits 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_outage_loses_nothing_and_delivery_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let mqtt = Mosquitto::start();
    // The first 8 requests are answered 503, with and without Retry-After semantics.
    let backend = Backend::start(Box::new(|i| if i < 8 { 503 } else { 200 })).await;
    let mut daemon = started(dir.path(), &mqtt, &backend, "").await;

    let publisher = Publisher::connect(mqtt.port, "device-sim").await;
    let total = 300;
    for n in 0..total {
        publisher
            .publish("plant/l1/pump-1/telemetry", telemetry(n, "pump-1"))
            .await;
    }
    publisher.wait_acked(total).await;
    wait_until(
        "the backlog to drain after the outage",
        Duration::from_secs(60),
        || backend.delivered_count() == total,
    )
    .await;
    let requests = backend.requests();
    let refused = requests.iter().filter(|r| r.status == 503).count();
    let delivered = backend.delivered();
    eprintln!(
        "503 answered {refused} times; delivered {} records ({} distinct, {} duplicates)",
        delivered.len(),
        distinct(&delivered),
        delivered.len() - distinct(&delivered)
    );
    assert_eq!(refused, 8);
    // A refused batch is retried unchanged: same records, same key.
    let first_key = requests[0].idempotency_key.clone();
    assert_eq!(requests[1].idempotency_key, first_key);
    assert!(
        daemon.log_text().contains("backend unavailable"),
        "the outage is logged"
    );
    assert!(
        daemon.log_text().contains("delivering again"),
        "the recovery is logged"
    );
    assert_eq!(daemon.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_buffered_before_a_crash_are_delivered_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mqtt = Mosquitto::start();
    let backend = Backend::start(Box::new(|_| 503)).await;
    let mut daemon = started(dir.path(), &mqtt, &backend, "").await;

    let publisher = Publisher::connect(mqtt.port, "device-sim").await;
    let total = 120;
    for n in 0..total {
        publisher
            .publish("plant/l1/pump-1/telemetry", telemetry(n, "pump-1"))
            .await;
    }
    publisher.wait_acked(total).await;
    // The periodic summary says when all of them are in the store.
    wait_until("every record committed", Duration::from_secs(30), || {
        daemon.log_text().contains(&format!("committed {total};"))
    })
    .await;
    daemon.kill();
    assert_eq!(backend.delivered_count(), 0);

    backend.set_script(Box::new(|_| 200));
    let config = daemon.config.clone();
    let mut restarted = Daemon::start(&config, &dir.path().join("tidegate-2.log"));
    wait_until(
        "the buffer to drain after restart",
        Duration::from_secs(30),
        || backend.delivered_count() == total,
    )
    .await;
    assert!(
        restarted
            .log_text()
            .contains(&format!("({total} records buffered")),
        "{}",
        restarted.log_text()
    );
    assert_eq!(restarted.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_payloads_are_counted_and_the_good_ones_flow() {
    let dir = tempfile::tempdir().unwrap();
    let mqtt = Mosquitto::start();
    let backend = Backend::start(Box::new(|_| 200)).await;
    let mut daemon = started(dir.path(), &mqtt, &backend, "").await;
    let publisher = Publisher::connect(mqtt.port, "device-sim").await;

    let deep = format!("{}1{}", "{\"a\":".repeat(40), "}".repeat(40));
    let oversize = format!("{{\"n\": 1, \"blob\": \"{}\"}}", "x".repeat(300 * 1024));
    let bad: Vec<Vec<u8>> = vec![
        b"not json at all".to_vec(),
        b"{\"n\": NaN}".to_vec(),
        b"[1, 2, 3]".to_vec(),
        b"\"just a string\"".to_vec(),
        b"{\"ts\": true, \"n\": 1}".to_vec(),
        vec![0xff, 0xfe, 0x00, 0x01],
        deep.into_bytes(),
        oversize.into_bytes(),
    ];
    let mut good = 0;
    for (i, payload) in bad.iter().enumerate() {
        publisher
            .publish("plant/l1/pump-1/telemetry", payload.clone())
            .await;
        publisher
            .publish("plant/l1/pump-1/telemetry", telemetry(i, "pump-1"))
            .await;
        good += 1;
    }
    publisher.wait_acked(bad.len() * 2).await;
    wait_until("the good records", Duration::from_secs(30), || {
        backend.delivered_count() == good
    })
    .await;
    assert!(
        daemon.is_running(),
        "bad payloads must not crash the daemon"
    );
    // Let the summary tick once more, then stop and read the final count.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(daemon.terminate(), Some(0));
    let log = daemon.log_text();
    assert!(
        log.contains("skipped a malformed message on plant/l1/pump-1/telemetry"),
        "{log}"
    );
    let final_line = log
        .lines()
        .find(|l| l.contains("final:"))
        .expect("a final summary line");
    assert!(
        final_line.contains(&format!(
            "decode errors {} (plant/l1/pump-1/telemetry {})",
            bad.len(),
            bad.len()
        )),
        "counted per topic: {final_line}"
    );
    assert!(
        !log.contains("connection lost"),
        "the connection stays up: {log}"
    );
}

#[test]
fn the_demo_runs_and_prints_records() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tidegate"))
        .args(["demo", "--duration", "4s", "--interval", "250ms", "--out"])
        .arg(dir.path().join("demo.ndjson"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    // One stdout line per record: "<time> <device> #<seq> ...".
    let printed: Vec<&str> = stdout.lines().filter(|l| l.contains(" #")).collect();
    let readings = printed
        .iter()
        .filter(|l| l.contains("pump-") && l.contains("flow_m3h="))
        .count();
    assert!(
        readings >= 8,
        "expected pump readings on stdout, got:\n{stdout}"
    );
    let ndjson = std::fs::read_to_string(dir.path().join("demo.ndjson")).unwrap();
    let records: Vec<serde_json::Value> = ndjson
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        records.len(),
        printed.len(),
        "the file and stdout hold the same records"
    );
    // Polled over Modbus: every reading that was read carries the pump's values; events
    // from the model (source "tidegate") and bad-quality polls are the only others.
    for r in &records {
        let reading = r["fields"]["vibration_mm_s"].is_number();
        let event = r["source"] == "tidegate";
        let bad = r["quality"]["status"] == "bad" || r.get("field_quality").is_some();
        assert!(reading || event || bad, "{r}");
    }
    // Once a pump's window is full, its readings are scored by the bundled model.
    assert!(
        records.iter().any(|r| r["anomaly"]["model"] == "pump-demo"),
        "{ndjson}"
    );
}

/// A broker sends a client no more than its window of unacknowledged QoS 1 messages, so a
/// message that fills the source's window (`inflight`) is committed, and acknowledged, at
/// once rather than after `commit_spacing`. Here commits are a second apart and the
/// devices send in rounds of 20, each round only once the last has arrived: waiting out
/// the spacing, the 20 rounds would take 20 s or more; committed at once, about two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_window_is_committed_without_waiting_out_the_commit_spacing() {
    let dir = tempfile::tempdir().unwrap();
    let mqtt = Mosquitto::start_with_inflight(20);
    let backend = Backend::start(Box::new(|_| 200)).await;
    let config = write_test_config(
        dir.path(),
        &format!(
            r#"
[store]
commit_spacing = "1s"

[[sources.mqtt]]
name = "local"
port = {port}
client_id = "tidegate-window-{port}"
inflight = 20

[[sources.mqtt.subscriptions]]
filter = "plant/+/+/telemetry"
topic_template = "plant/{{line}}/{{device}}/telemetry"

[[uplinks.http]]
name = "cloud"
url = "{url}"
linger = "20ms"
"#,
            port = mqtt.port,
            url = backend.url
        ),
    );
    let mut daemon = Daemon::start(&config, &dir.path().join("tidegate.log"));
    wait_until("the daemon to subscribe", Duration::from_secs(20), || {
        daemon
            .log_text()
            .contains("subscribed to plant/+/+/telemetry")
    })
    .await;

    let publisher = Publisher::connect(mqtt.port, "device-sim").await;
    let (rounds, per_round) = (20, 20);
    let started = std::time::Instant::now();
    for round in 0..rounds {
        for i in 0..per_round {
            let n = round * per_round + i;
            publisher
                .publish("plant/line-a/pump-1/telemetry", telemetry(n, "pump-1"))
                .await;
        }
        wait_until("the round at the backend", Duration::from_secs(30), || {
            backend.delivered_count() == (round + 1) * per_round
        })
        .await;
    }
    let took = started.elapsed();
    eprintln!("{rounds} rounds of {per_round} took {took:?}");
    assert!(
        took < Duration::from_secs(15),
        "each round committed when its window filled, not a second later: took {took:?}"
    );
    let ns: Vec<u64> = backend
        .delivered()
        .iter()
        .map(|r| r["fields"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(
        ns,
        (0..(rounds * per_round) as u64).collect::<Vec<_>>(),
        "each once, in order"
    );
    assert_eq!(daemon.terminate(), Some(0), "SIGTERM exits 0");
}
