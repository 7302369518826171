//! The MQTT uplink against a real mosquitto standing in for a cloud broker: mutual TLS
//! with client certificates, a topic per device, QoS 1 with records leaving the store
//! only on their PUBACK, and a broker restart mid-stream that loses nothing.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use support::*;

fn config(dir: &std::path::Path, port: u16, tls: &str) -> std::path::PathBuf {
    write_test_config(
        dir,
        &format!(
            r#"
[[sources.simulated]]
name = "plant"
devices = 2
interval = "20ms"

[[uplinks.mqtt]]
name = "fleet"
host = "localhost"
port = {port}
topic = "tidegate/{{gateway}}/{{device}}/telemetry"
tls = {{ {tls} }}
max_records = 50
linger = "100ms"
backoff_min = "100ms"
backoff_max = "500ms"
timeout = "5s"
"#
        ),
    )
}

fn committed(log: &str) -> u64 {
    log.lines()
        .find(|l| l.contains("final:"))
        .and_then(|l| {
            l.split("committed ")
                .nth(1)?
                .split(';')
                .next()?
                .parse()
                .ok()
        })
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_reach_a_broker_over_mutual_tls_and_survive_its_restart() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let mut broker = Mosquitto::start_mtls(&pki);
    let subscriber = Subscriber::start(broker.port, "tidegate/#").await;
    let tls = format!(
        "ca_file = \"{}\", client_cert_file = \"{}\", client_key_file = \"{}\"",
        pki.ca_pem.display(),
        pki.client_cert.display(),
        pki.client_key.display()
    );
    let config = config(dir.path(), broker.secure_port.unwrap(), &tls);
    let mut daemon = Daemon::start(&config, &dir.path().join("tidegate.log"));
    wait_until("records at the broker", Duration::from_secs(30), || {
        subscriber.messages().len() >= 100
    })
    .await;
    let before_restart = subscriber.messages().len();
    broker.restart_gracefully(Duration::from_millis(1500));
    daemon
        .wait_log(
            "the uplink back after the restart",
            Duration::from_secs(30),
            |t| t.matches("uplink fleet: connected").count() >= 2,
        )
        .await;
    wait_until(
        "more records after the restart",
        Duration::from_secs(30),
        || subscriber.messages().len() >= before_restart + 200,
    )
    .await;
    assert_eq!(daemon.terminate(), Some(0));
    let last = committed(&daemon.log_text());
    wait_until(
        "everything committed at the subscriber",
        Duration::from_secs(30),
        || {
            subscriber
                .messages()
                .iter()
                .any(|(_, m)| m["seq"].as_u64() == Some(last))
        },
    )
    .await;

    let messages = subscriber.messages();
    let mut copies: HashMap<u64, usize> = HashMap::new();
    for (topic, m) in &messages {
        let seq = m["seq"].as_u64().unwrap();
        *copies.entry(seq).or_default() += 1;
        assert_eq!(m["gateway"], "gw-test");
        assert_eq!(
            topic,
            &format!(
                "tidegate/gw-test/{}/telemetry",
                m["device"].as_str().unwrap()
            ),
            "a topic per device"
        );
    }
    let lost = (1..=last).filter(|s| !copies.contains_key(s)).count();
    let duplicates = messages.len() - copies.len();
    eprintln!(
        "{last} records committed; {} messages at the subscriber across a broker restart; lost {lost}, duplicates {duplicates}",
        messages.len()
    );
    assert_eq!(lost, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_wants_a_client_certificate_refuses_without_one_and_the_data_stays() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let broker = Mosquitto::start_mtls(&pki);
    let tls = format!("ca_file = \"{}\"", pki.ca_pem.display());
    let config = config(dir.path(), broker.secure_port.unwrap(), &tls);
    let mut daemon = Daemon::start(&config, &dir.path().join("tidegate.log"));
    daemon
        .wait_log("the refusal", Duration::from_secs(30), |t| {
            t.contains("delivery refused") && t.contains("lag ")
        })
        .await;
    assert_eq!(daemon.terminate(), Some(0));
    let log = daemon.log_text();
    let why = log
        .lines()
        .find(|l| l.contains("delivery refused"))
        .unwrap();
    eprintln!("{why}");
    assert!(why.contains("ERROR") && why.contains("TLS"), "{why}");
    let final_line = log.lines().find(|l| l.contains("final:")).unwrap();
    assert!(final_line.contains("delivered 0"), "{final_line}");
    assert!(
        !final_line.contains("buffer 0 records"),
        "data kept: {final_line}"
    );
}
