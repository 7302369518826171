//! The MQTT source against a real mosquitto: TLS with a private CA and a password, a
//! wrong password, and a broker restart that loses the session.

mod support;

use std::time::Duration;

use support::*;

fn mqtt_config(dir: &std::path::Path, url: &str, source: &str) -> std::path::PathBuf {
    write_test_config(
        dir,
        &format!(
            r#"

[[sources.mqtt]]
name = "local"
reconnect_min = "100ms"
reconnect_max = "1s"
{source}

[[sources.mqtt.subscriptions]]
filter = "sensors/#"
device_field = "id"

[[uplinks.http]]
name = "cloud"
url = "{url}"
linger = "100ms"
"#,
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_a_password_to_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let mqtt = Mosquitto::start_secure(&pki, "gateway", "br0ker-pass");
    let backend = Backend::start(Box::new(|_| 200)).await;
    std::fs::write(dir.path().join("mqtt.pass"), "br0ker-pass\n").unwrap();
    let source = format!(
        "host = \"localhost\"\nport = {}\nusername = \"gateway\"\npassword = {{ file = \"mqtt.pass\" }}\n\
         tls = {{ ca_file = \"{}\" }}\n",
        mqtt.secure_port.unwrap(),
        pki.ca_pem.display()
    );
    let config = mqtt_config(dir.path(), &backend.url, &source);
    let mut daemon = Daemon::start(&config, &dir.path().join("tidegate.log"));
    wait_until(
        "a TLS session with the broker",
        Duration::from_secs(20),
        || daemon.log_text().contains("subscribed to sensors/#"),
    )
    .await;
    let publisher = Publisher::connect(mqtt.port, "sensor-sim").await;
    for n in 0..20 {
        publisher
            .publish(
                "sensors/room-1",
                format!("{{\"id\": \"th-1\", \"n\": {n}}}"),
            )
            .await;
    }
    wait_until(
        "records over the TLS session",
        Duration::from_secs(20),
        || backend.delivered_count() == 20,
    )
    .await;
    assert_eq!(daemon.terminate(), Some(0));
    assert!(backend.delivered().iter().all(|r| r["device"] == "th-1"));
    assert!(
        !daemon.log_text().contains("br0ker-pass"),
        "the password never reaches the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_reported_and_retried_with_back_off() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let mqtt = Mosquitto::start_secure(&pki, "gateway", "right");
    let backend = Backend::start(Box::new(|_| 200)).await;
    std::fs::write(dir.path().join("mqtt.pass"), "wrong\n").unwrap();
    let source = format!(
        "host = \"localhost\"\nport = {}\nusername = \"gateway\"\npassword = {{ file = \"mqtt.pass\" }}\n\
         tls = {{ ca_file = \"{}\" }}\n",
        mqtt.secure_port.unwrap(),
        pki.ca_pem.display()
    );
    let config = mqtt_config(dir.path(), &backend.url, &source);
    let mut daemon = Daemon::start(&config, &dir.path().join("tidegate.log"));
    wait_until(
        "the refusal to be logged twice",
        Duration::from_secs(20),
        || daemon.log_text().matches("cannot connect").count() >= 2,
    )
    .await;
    assert!(daemon.is_running(), "a refused login is not fatal");
    assert_eq!(daemon.terminate(), Some(0));
    let log = daemon.log_text();
    let line = log.lines().find(|l| l.contains("cannot connect")).unwrap();
    eprintln!("logged: {line}");
    assert!(
        line.contains("ERROR"),
        "a refused login needs a person: {line}"
    );
    assert!(line.contains("NotAuthorized"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_broker_restart_it_reconnects_and_resubscribes() {
    let dir = tempfile::tempdir().unwrap();
    let mut mqtt = Mosquitto::start();
    let backend = Backend::start(Box::new(|_| 200)).await;
    let config = mqtt_config(dir.path(), &backend.url, &format!("port = {}\n", mqtt.port));
    let mut daemon = Daemon::start(&config, &dir.path().join("tidegate.log"));
    wait_until("the first subscription", Duration::from_secs(20), || {
        daemon.log_text().contains("subscribed to sensors/#")
    })
    .await;
    {
        let publisher = Publisher::connect(mqtt.port, "sensor-sim").await;
        for n in 0..10 {
            publisher
                .publish("sensors/a", format!("{{\"id\": \"s\", \"n\": {n}}}"))
                .await;
        }
        publisher.wait_acked(10).await;
        wait_until(
            "records before the restart",
            Duration::from_secs(20),
            || backend.delivered_count() == 10,
        )
        .await;
    }
    // The broker keeps no state across this restart: the session is gone and must be
    // re-created with its subscription.
    mqtt.restart(Duration::from_millis(500));
    wait_until("a second subscription", Duration::from_secs(20), || {
        daemon.log_text().matches("subscribed to sensors/#").count() >= 2
    })
    .await;
    let publisher = Publisher::connect(mqtt.port, "sensor-sim-2").await;
    for n in 10..20 {
        publisher
            .publish("sensors/a", format!("{{\"id\": \"s\", \"n\": {n}}}"))
            .await;
    }
    wait_until("records after the restart", Duration::from_secs(20), || {
        backend.delivered_count() == 20
    })
    .await;
    assert_eq!(daemon.terminate(), Some(0));
    let log = daemon.log_text();
    assert!(log.contains("connection lost"), "{log}");
    assert!(log.contains("(session new)"), "{log}");
}
