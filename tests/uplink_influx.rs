//! The InfluxDB uplink against a real InfluxDB 1.x started on loopback: the points are
//! queried back, with their types, tags and the anomaly score; a missing database is a
//! refusal that keeps the data, and creating it lets the backlog through.

mod support;

use std::time::Duration;

use support::*;

fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn points_written_to_influxdb_are_queried_back() {
    let influx = Influx::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_test_config(
        dir.path(),
        &format!(
            r#"
[[sources.simulated]]
name = "plant"
devices = 3
interval = "20ms"
seed = 5

[[models]]
name = "pumps"
path = "{model}"
devices = ["pump-*"]

[[uplinks.influxdb]]
name = "historian"
url = "{url}"
database = "plant"
measurement = "pumps"
max_records = 200
linger = "100ms"
backoff_min = "100ms"
backoff_max = "500ms"
"#,
            model = root().join("models/pump-demo.onnx").display(),
            url = influx.url
        ),
    );
    // The database does not exist yet: InfluxDB answers 404, the data is kept.
    let mut daemon = Daemon::start(&config, &dir.path().join("tidegate.log"));
    daemon
        .wait_log("the refusal", Duration::from_secs(30), |t| {
            t.contains("delivery refused") && t.contains("database not found")
        })
        .await;
    influx.query(None, "CREATE DATABASE plant").await;
    let count = |answer: &serde_json::Value| {
        answer["results"][0]["series"][0]["values"][0][1]
            .as_u64()
            .unwrap_or(0)
    };
    wait_until_async("points in InfluxDB", Duration::from_secs(60), || async {
        count(
            &influx
                .query(Some("plant"), "SELECT count(tidegate_seq) FROM pumps")
                .await,
        ) >= 300
    })
    .await;
    assert_eq!(daemon.terminate(), Some(0));
    let log = daemon.log_text();
    let final_line = log.lines().find(|l| l.contains("final:")).unwrap();
    let committed: u64 = final_line
        .split("committed ")
        .nth(1)
        .and_then(|t| t.split(';').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    let stored = count(
        &influx
            .query(Some("plant"), "SELECT count(tidegate_seq) FROM pumps")
            .await,
    );
    let sample = influx
        .query(
            Some("plant"),
            "SELECT * FROM pumps WHERE device = 'pump-1' AND anomaly_score > 0 ORDER BY time DESC LIMIT 1",
        )
        .await;
    let series = &sample["results"][0]["series"][0];
    let columns: Vec<&str> = series["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let row = series["values"][0].as_array().unwrap();
    let value = |name: &str| &row[columns.iter().position(|c| *c == name).unwrap()];
    eprintln!(
        "{committed} records committed (events included), {stored} points in InfluxDB; a point: {}",
        columns
            .iter()
            .zip(row)
            .map(|(c, v)| format!("{c}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    // Every committed record is a point (events too: they are points of the same
    // measurement); a resent batch overwrites, so none is counted twice.
    assert_eq!(stored, committed, "every record is a point, once");
    assert_eq!(value("device"), "pump-1");
    assert_eq!(value("gateway"), "gw-test");
    assert_eq!(value("source"), "plant");
    assert!(value("rpm").is_i64(), "integers stay integers");
    assert!(value("running").is_boolean(), "booleans stay booleans");
    assert!(value("flow_m3h").is_f64());
    assert!(value("anomaly_score").as_f64().unwrap() > 0.0);
    assert!(value("is_anomaly").is_boolean());
}
