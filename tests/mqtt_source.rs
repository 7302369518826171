//! The MQTT source against a real mosquitto: TLS with a private CA and a password, a
//! wrong password, a broker restart that loses the session, connections cut with
//! messages in flight, and one cut in the middle of a write of acknowledgements.

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

/// A dropped connection leaves messages that were received on it but not yet committed.
/// The broker delivers them again on the next connection (the session is persistent), and
/// each must be acknowledged there once, after its own commit. A PUBACK carried over
/// from the old connection would answer the redelivery before it is stored, and the
/// redelivery's own PUBACK would then answer whatever the broker had since sent under
/// that packet id, before that was stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_dropped_connection_each_message_is_acknowledged_once_where_it_was_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let mqtt = Mosquitto::start();
    let (wire, backend, mut daemon) = behind_a_wire(dir.path(), &mqtt, "").await;
    let publisher = Publisher::connect(mqtt.port, "sensor-sim").await;
    let mut sent = 0;
    let mut cuts_with_messages_in_flight = 0;
    for attempt in 1..=5 {
        // One message commits at once (the store was quiet); the next ones wait out the
        // commit spacing, and the connection is cut meanwhile.
        publisher
            .publish("sensors/a", format!("{{\"id\": \"s\", \"n\": {sent}}}"))
            .await;
        sent += 1;
        wait_until("the first message stored", Duration::from_secs(20), || {
            distinct(&backend) == sent
        })
        .await;
        let delivered_before = publishes_on(&wire.seen(), attempt);
        for _ in 0..5 {
            publisher
                .publish("sensors/a", format!("{{\"id\": \"s\", \"n\": {sent}}}"))
                .await;
            sent += 1;
        }
        wait_until("the messages on the wire", Duration::from_secs(20), || {
            publishes_on(&wire.seen(), attempt) == delivered_before + 5
        })
        .await;
        wire.cut_all();
        if !unacknowledged_on(&wire.seen(), attempt).is_empty() {
            cuts_with_messages_in_flight += 1;
        }
        wait_until("the next connection", Duration::from_secs(20), || {
            subscribed(&daemon) == attempt as usize + 1
        })
        .await;
        if cuts_with_messages_in_flight == 2 {
            break;
        }
    }
    assert!(
        cuts_with_messages_in_flight > 0,
        "no cut came within a commit spacing of the messages: nothing was tested"
    );
    wait_until("every message stored", Duration::from_secs(30), || {
        distinct(&backend) == sent
    })
    .await;
    // Shutdown commits what is pending and sends its acknowledgements.
    assert_eq!(daemon.terminate(), Some(0));
    let seen = wire.seen();
    let connections = seen.iter().map(|(c, _)| *c).max().unwrap_or(0);
    let redelivered = seen
        .iter()
        .filter(|(_, s)| matches!(s, mqtt_wire::Seen::Publish { dup: true, .. }))
        .count();
    eprintln!(
        "{sent} messages, {connections} connections, {cuts_with_messages_in_flight} cut with messages in flight, {redelivered} delivered again"
    );
    assert!(
        redelivered > 0,
        "the broker delivered again what was in flight"
    );
    for connection in 1..=connections {
        unacknowledged_on(&seen, connection);
    }
}

/// The PUBACKs of one commit go out in one write. A connection that breaks in the middle
/// of it leaves the broker with some of them and not the rest: it delivers the rest again
/// on the next connection, where each is committed (a second copy: a duplicate, never a
/// gap) and acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubacks_cut_off_in_the_middle_of_a_write_lose_nothing() {
    const BURST: usize = 6;
    const THROUGH: usize = 3;
    let dir = tempfile::tempdir().unwrap();
    let mqtt = Mosquitto::start();
    let (wire, backend, mut daemon) = behind_a_wire(dir.path(), &mqtt, "").await;
    let publisher = Publisher::connect(mqtt.port, "sensor-sim").await;
    let publish = async |n: usize| {
        publisher
            .publish("sensors/a", format!("{{\"id\": \"s\", \"n\": {n}}}"))
            .await;
    };
    // After a quiet spell one message commits at once; the burst behind it then waits
    // out the commit spacing (1 s) and commits, and is acknowledged, together.
    publish(0).await;
    wait_until("the first message stored", Duration::from_secs(20), || {
        distinct(&backend) == 1
    })
    .await;
    wait_until("its PUBACK on the wire", Duration::from_secs(20), || {
        unacknowledged_on(&wire.seen(), 1).is_empty()
    })
    .await;
    wire.cut_after_pubacks(THROUGH);
    for n in 1..=BURST {
        publish(n).await;
    }
    wait_until("the next connection", Duration::from_secs(30), || {
        subscribed(&daemon) == 2
    })
    .await;
    let through_in_the_cut_read = wire.pubacks_through_in_the_cut_read();
    assert!(
        through_in_the_cut_read.is_some_and(|n| n > 0),
        "the cut fell inside a write of several PUBACKs, not between two: {through_in_the_cut_read:?} went through from its read"
    );
    let first = wire.seen();
    let left_over = unacknowledged_on(&first, 1);
    assert_eq!(
        left_over.len(),
        BURST - THROUGH,
        "the broker got {THROUGH} of the burst's {BURST} PUBACKs on the first connection: {first:?}"
    );
    wait_until("every message stored", Duration::from_secs(30), || {
        distinct(&backend) == BURST + 1
    })
    .await;
    // Shutdown commits what is pending and sends its acknowledgements.
    assert_eq!(daemon.terminate(), Some(0));
    let seen = wire.seen();
    let again: Vec<u16> = seen
        .iter()
        .filter_map(|(c, s)| match s {
            mqtt_wire::Seen::Publish { pkid, dup: true } if *c == 2 => Some(*pkid),
            _ => None,
        })
        .collect();
    assert_eq!(
        (again.len(), again.iter().copied().collect()),
        (left_over.len(), left_over.clone()),
        "the broker delivered again, on the second connection, just the messages it had no PUBACK for: {seen:?}"
    );
    assert!(
        unacknowledged_on(&seen, 2).is_empty(),
        "each was acknowledged on the second connection: {seen:?}"
    );
    let records = backend.delivered().len();
    assert_eq!(
        records,
        BURST + 1 + left_over.len(),
        "every message stored once, and the ones delivered again a second time"
    );
}

/// A daemon subscribed to `sensors/#` through a [`mqtt_wire::MqttWire`] in front of
/// `mqtt`, with commits 1 s apart (after a quiet spell the first commits at once), and
/// the backend it delivers to. `source` lands in the `[[sources.mqtt]]` table.
async fn behind_a_wire(
    dir: &std::path::Path,
    mqtt: &Mosquitto,
    source: &str,
) -> (mqtt_wire::MqttWire, Backend, Daemon) {
    let wire = mqtt_wire::MqttWire::start(mqtt.port).await;
    let backend = Backend::start(Box::new(|_| 200)).await;
    let config = mqtt_config(
        dir,
        &backend.url,
        &format!("port = {}\n{source}", wire.port),
    );
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("\n[store]\ncommit_spacing = \"1s\"\n");
    std::fs::write(&config, text).unwrap();
    let daemon = Daemon::start(&config, &dir.join("tidegate.log"));
    wait_until("the subscription", Duration::from_secs(20), || {
        subscribed(&daemon) == 1
    })
    .await;
    (wire, backend, daemon)
}

/// How many times the daemon has subscribed, one per connection.
fn subscribed(daemon: &Daemon) -> usize {
    daemon.log_text().matches("subscribed to sensors/#").count()
}

/// Distinct messages (by their `n`) the backend has received.
fn distinct(backend: &Backend) -> usize {
    backend
        .delivered()
        .iter()
        .filter_map(|r| r["fields"]["n"].as_u64())
        .collect::<std::collections::BTreeSet<_>>()
        .len()
}

/// QoS 1 messages the broker delivered on `connection`.
fn publishes_on(seen: &[(u32, mqtt_wire::Seen)], connection: u32) -> usize {
    seen.iter()
        .filter(|(c, s)| *c == connection && matches!(s, mqtt_wire::Seen::Publish { .. }))
        .count()
}

/// Packet ids delivered on `connection` and not acknowledged on it. Fails the test on a
/// PUBACK that answers no message delivered on that connection and not yet acknowledged.
fn unacknowledged_on(
    seen: &[(u32, mqtt_wire::Seen)],
    connection: u32,
) -> std::collections::BTreeSet<u16> {
    let mut outstanding = std::collections::BTreeSet::new();
    for (_, packet) in seen.iter().filter(|(c, _)| *c == connection) {
        match *packet {
            mqtt_wire::Seen::Publish { pkid, .. } => {
                outstanding.insert(pkid);
            }
            mqtt_wire::Seen::PubAck { pkid } => assert!(
                outstanding.remove(&pkid),
                "connection {connection}: PUBACK {pkid} answers no message delivered on it and not yet acknowledged: {seen:?}"
            ),
        }
    }
    outstanding
}

/// The source counts the QoS 1 messages it holds unacknowledged so that the one filling
/// the broker's window is committed at once. A connection cut with part of a window in
/// flight must not leave that count behind: on the next connection the broker's window
/// starts empty (it delivers the cut-off messages again inside it), and a count carried
/// over would fire the early commit before the window is full, every window, and leave
/// the rest of each waiting out the commit spacing (1 s here). The devices send 20 rounds
/// of one window, each round only once the last has arrived: committed when each window
/// fills, the rounds take about 4 s here; waiting out the spacing, over 20 s (22 s with
/// the count carried over).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_cut_halfway_fills_and_commits_at_once_on_the_next_connection() {
    const INFLIGHT: usize = 10;
    const ROUNDS: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let mqtt = Mosquitto::start_with_inflight(INFLIGHT as u16);
    let (wire, backend, mut daemon) =
        behind_a_wire(dir.path(), &mqtt, &format!("inflight = {INFLIGHT}\n")).await;
    let publisher = Publisher::connect(mqtt.port, "sensor-sim").await;
    let mut sent = 0usize;
    let publish = async |n: &mut usize, count: usize| {
        for _ in 0..count {
            publisher
                .publish("sensors/a", format!("{{\"id\": \"s\", \"n\": {n}}}"))
                .await;
            *n += 1;
        }
    };

    // After a quiet spell the first message commits at once; the next ones wait out the
    // spacing, and the connection is cut meanwhile. A cut that came too late (after
    // their commit) is tried again, up to five times.
    let mut connection = 1u32;
    let cut_off = 4;
    loop {
        publish(&mut sent, 1).await;
        wait_until("the first message stored", Duration::from_secs(20), || {
            distinct(&backend) == sent
        })
        .await;
        let before = publishes_on(&wire.seen(), connection);
        publish(&mut sent, cut_off).await;
        wait_until(
            "part of a window on the wire",
            Duration::from_secs(20),
            || publishes_on(&wire.seen(), connection) == before + cut_off,
        )
        .await;
        wire.cut_all();
        let in_flight = unacknowledged_on(&wire.seen(), connection).len();
        connection += 1;
        wait_until("the next connection", Duration::from_secs(20), || {
            subscribed(&daemon) == connection as usize
        })
        .await;
        if in_flight == cut_off {
            break;
        }
        assert!(connection <= 5, "no cut came with the messages in flight");
        wait_until(
            "the cut-off messages stored",
            Duration::from_secs(20),
            || distinct(&backend) == sent,
        )
        .await;
    }

    // The broker delivers the cut-off messages again on the new connection; with these
    // the first round fills its window. The messages go one at a time, each once the
    // last is on the wire, so that each reaches the store on its own: in a burst the
    // whole window would join whichever commit came first.
    wait_until(
        "the cut-off messages delivered again",
        Duration::from_secs(20),
        || publishes_on(&wire.seen(), connection) == cut_off,
    )
    .await;
    let started = std::time::Instant::now();
    for round in 0..ROUNDS {
        let count = if round == 0 {
            INFLIGHT - cut_off
        } else {
            INFLIGHT
        };
        for _ in 0..count {
            let before = publishes_on(&wire.seen(), connection);
            publish(&mut sent, 1).await;
            wait_until_every(
                Duration::from_millis(2),
                "the message on the wire",
                Duration::from_secs(20),
                || publishes_on(&wire.seen(), connection) > before,
            )
            .await;
        }
        wait_until("the window stored", Duration::from_secs(30), || {
            distinct(&backend) == sent
        })
        .await;
    }
    let took = started.elapsed();
    eprintln!("{ROUNDS} windows after the cut took {took:?}");
    assert!(
        took < Duration::from_secs(12),
        "each window committed when it filled, not a spacing later: took {took:?}"
    );
    // Shutdown commits what is pending and sends its acknowledgements.
    assert_eq!(daemon.terminate(), Some(0));
    let seen = wire.seen();
    assert_eq!(
        publishes_on(&seen, connection),
        ROUNDS * INFLIGHT,
        "the last connection carried the cut-off messages again and every round: {seen:?}"
    );
    assert!(
        unacknowledged_on(&seen, connection).is_empty(),
        "every message of the last connection was acknowledged on it: {seen:?}"
    );
}
