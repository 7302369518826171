//! Local inference with the real ONNX runtime path (tract): parity with onnxruntime on the
//! bundled model, model contract errors, a broken model that must not stop the data, and
//! anomalies flagged on a simulated plant with their event records.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use support::*;
use tidegate::pipeline::contract::Overrides;
use tidegate::pipeline::model;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn scores_match_onnxruntime_on_the_bundled_model() {
    let loaded = model::load(
        &root().join("models/pump-demo.onnx"),
        &Overrides::default(),
        "parity",
    )
    .unwrap();
    let fixture: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("models/parity/pump-demo.json")).unwrap(),
    )
    .unwrap();
    let windows = fixture["raw_windows"].as_array().unwrap();
    let expected: Vec<f64> = fixture["scores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let mut data: Vec<f32> = windows
        .iter()
        .flat_map(|w| w.as_array().unwrap().iter())
        .flat_map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
        })
        .collect();
    loaded.normalise(&mut data);
    let scores = loaded.score(&data, windows.len()).unwrap();
    let mut worst: f64 = 0.0;
    for (got, want) in scores.iter().zip(&expected) {
        let relative = (f64::from(*got) - want).abs() / want.abs().max(1.0);
        worst = worst.max(relative);
    }
    eprintln!(
        "{} windows: largest difference to onnxruntime {worst:.2e} (relative to max(1, |score|))",
        scores.len()
    );
    assert_eq!(scores.len(), expected.len());
    assert!(worst <= 1e-5, "tract and onnxruntime disagree by {worst}");
    // The fixture holds normal and distorted windows: the model tells them apart.
    let threshold = loaded.contract.threshold as f32;
    assert!(scores[..16].iter().filter(|s| **s > threshold).count() <= 1);
    assert!(scores[16..].iter().all(|s| *s > threshold), "{scores:?}");
}

fn sim_config(dir: &Path, model: &str) -> PathBuf {
    write_test_config(
        dir,
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

[[uplinks.file]]
name = "archive"
path = "{out}"
linger = "100ms"
"#,
            out = dir.join("records.ndjson").display()
        ),
    )
}

/// Adds `keys` to the `[[models]]` binding of a config written by `sim_config`.
fn add_binding_keys(config: &Path, keys: &str) {
    let text = std::fs::read_to_string(config).unwrap().replace(
        "devices = [\"pump-*\"]",
        &format!("devices = [\"pump-*\"]\n{keys}"),
    );
    std::fs::write(config, text).unwrap();
}

/// `tidegate check -c config`.
fn check(config: &Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tidegate"))
        .args(["check", "-c"])
        .arg(config)
        .output()
        .unwrap()
}

#[test]
fn check_names_both_shapes_when_the_model_does_not_fit_the_binding() {
    let dir = tempfile::tempdir().unwrap();
    let config = sim_config(
        dir.path(),
        &root().join("models/pump-demo.onnx").display().to_string(),
    );
    add_binding_keys(
        &config,
        "window = 12\nchannels = [\"flow_m3h\", \"pressure_bar\", \"temperature_c\", \"vibration_mm_s\"]\n\
         mean = [30.0, 5.0, 50.0, 2.0]\nstd = [3.0, 0.1, 2.0, 0.2]",
    );
    let out = check(&config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    assert_eq!(out.status.code(), Some(78));
    assert!(
        stderr.contains("expects input `window` [N, 10, 5]"),
        "{stderr}"
    );
    assert!(stderr.contains("windows of 12 rows × 4 channels (flow_m3h, pressure_bar, temperature_c, vibration_mm_s): [N, 12, 4]"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_model_is_reported_and_the_data_keeps_flowing() {
    for (label, content) in [
        ("missing", None),
        ("corrupt", Some(b"this is not an onnx file".to_vec())),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("model.onnx");
        if let Some(bytes) = content {
            std::fs::write(&model, bytes).unwrap();
        }
        let config = sim_config(dir.path(), &model.display().to_string());
        assert_eq!(
            check(&config).status.code(),
            Some(78),
            "{label}: check fails"
        );
        let mut daemon = Daemon::start(&config, &dir.path().join("tidegate.log"));
        let out = dir.path().join("records.ndjson");
        wait_until("records without scores", Duration::from_secs(20), || {
            support::modbus::read_ndjson(&out).len() >= 40
        })
        .await;
        assert_eq!(daemon.terminate(), Some(0), "{label}");
        let log = daemon.log_text();
        let error = log
            .lines()
            .find(|l| l.contains("ERROR model pumps:"))
            .unwrap_or_else(|| panic!("{log}"));
        eprintln!("{label}: {error}");
        assert!(error.contains("cannot read model"), "{error}");
        let records = support::modbus::read_ndjson(&out);
        assert!(records.iter().all(|r| r.get("anomaly").is_none()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_of_the_simulated_plant_are_flagged_with_events() {
    let dir = tempfile::tempdir().unwrap();
    let config = sim_config(
        dir.path(),
        &root().join("models/pump-demo.onnx").display().to_string(),
    );
    let mut daemon = Daemon::start(&config, &dir.path().join("tidegate.log"));
    let out = dir.path().join("records.ndjson");
    wait_until(
        "an anomaly to start and end",
        Duration::from_secs(60),
        || {
            support::modbus::read_ndjson(&out)
                .iter()
                .any(|r| r["fields"]["event"] == "anomaly_end")
        },
    )
    .await;
    assert_eq!(daemon.terminate(), Some(0));
    let records = support::modbus::read_ndjson(&out);
    let scored: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r.get("anomaly").is_some())
        .collect();
    let flagged = scored
        .iter()
        .filter(|r| r["anomaly"]["is_anomaly"] == true)
        .count();
    let starts: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["fields"]["event"] == "anomaly_start")
        .collect();
    eprintln!(
        "{} records, {} scored, {flagged} flagged, {} anomaly episodes started",
        records.len(),
        scored.len(),
        starts.len()
    );
    assert!(flagged > 0);
    assert!(
        flagged < scored.len() / 2,
        "most of the plant runs normally"
    );
    let start = starts[0];
    assert_eq!(start["source"], "tidegate");
    assert_eq!(start["fields"]["model"], "pump-demo");
    let end = records
        .iter()
        .find(|r| r["fields"]["event"] == "anomaly_end")
        .unwrap();
    assert!(
        end["fields"]["peak_score"].as_f64().unwrap()
            > end["fields"]["threshold"].as_f64().unwrap()
    );
    assert!(
        end["fields"]["end_ts"].as_i64().unwrap() >= end["fields"]["start_ts"].as_i64().unwrap()
    );
    let first = &scored[0]["anomaly"];
    assert_eq!(first["model"], "pump-demo");
    assert_eq!(first["version"], "1");
    assert!(daemon.log_text().contains("WARN  anomaly: pump-"));
}

#[test]
fn replay_scores_recorded_rows_with_the_daemon_code_and_reports_metrics() {
    let dir = tempfile::tempdir().unwrap();
    // A labeled recording of two pumps: normal, then a stretch where pump-2 runs hot and
    // shakes (the kind of fault the bundled model was trained to notice).
    let mut csv = String::from(
        "ts;device;flow_m3h;pressure_bar;temperature_c;vibration_mm_s;current_a;label\n",
    );
    let mut rng = fastrand::Rng::with_seed(3);
    for step in 0..300 {
        for (device, flow) in [("pump-1", 33.0), ("pump-2", 36.0)] {
            let fault = device == "pump-2" && (150..200).contains(&step);
            let noise = |scale: f64, rng: &mut fastrand::Rng| (rng.f64() - 0.5) * scale;
            let f = flow + 2.0 * ((step as f64) * 0.05).sin() + noise(1.0, &mut rng);
            csv.push_str(&format!(
                "{};{device};{:.3};{:.3};{:.3};{:.3};{:.3};{}\n",
                1_790_000_000_000i64 + step * 1000,
                f,
                4.0 + 0.03 * f + noise(0.05, &mut rng),
                if fault { 66.0 } else { 48.0 + 0.1 * f } + noise(0.1, &mut rng),
                if fault {
                    8.0 + noise(3.0, &mut rng)
                } else {
                    2.0 + noise(0.4, &mut rng)
                },
                11.0 + 0.05 * f + if fault { 1.5 } else { 0.0 } + noise(0.1, &mut rng),
                u8::from(fault)
            ));
        }
    }
    let data = dir.path().join("recording.csv");
    std::fs::write(&data, csv).unwrap();
    let scores = dir.path().join("scores.csv");
    let plot = dir.path().join("plot.svg");
    let metrics = dir.path().join("metrics.json");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tidegate"))
        .arg("replay")
        .arg(&data)
        .arg("--model")
        .arg(root().join("models/pump-demo.onnx"))
        .args([
            "--sep",
            ";",
            "--device-column",
            "device",
            "--label-column",
            "label",
            "--timestamp-column",
            "ts",
            "--out",
        ])
        .arg(&scores)
        .arg("--plot")
        .arg(&plot)
        .arg("--metrics-json")
        .arg(&metrics)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("F1 "), "{stderr}");
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&metrics).unwrap()).unwrap();
    assert!(
        m["recall"].as_f64().unwrap() > 0.9,
        "the fault is found: {m}"
    );
    assert!(m["far"].as_f64().unwrap() < 0.1, "few false alarms: {m}");
    let rows = std::fs::read_to_string(&scores).unwrap();
    assert_eq!(rows.lines().count(), 601, "a line per row plus the header");
    assert!(
        rows.lines()
            .nth(1)
            .unwrap()
            .starts_with("0,1790000000000,pump-1,,0,0"),
        "no score before the window fills"
    );
    let svg = std::fs::read_to_string(&plot).unwrap();
    // The plot shows the first device (pump-1, fault-free here) against its threshold.
    assert!(
        svg.starts_with("<svg")
            && svg.contains("device pump-1;")
            && svg.contains("<title>threshold")
    );
    assert!(
        !svg.contains("<title>labeled anomaly"),
        "pump-1 has no labeled anomaly"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_puts_a_new_model_in_place_only_when_it_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.onnx");
    std::fs::write(&model, b"not a model yet").unwrap();
    let config = sim_config(dir.path(), &model.display().to_string());
    let mut daemon = Daemon::start(&config, &dir.path().join("tidegate.log"));
    let out = dir.path().join("records.ndjson");
    wait_until("records, unscored", Duration::from_secs(20), || {
        support::modbus::read_ndjson(&out).len() >= 20
    })
    .await;
    let hup = |pid: u32| {
        std::process::Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap()
    };
    // A valid model arrives: scoring starts without a restart.
    std::fs::copy(root().join("models/pump-demo.onnx"), &model).unwrap();
    hup(daemon.pid());
    wait_until(
        "scored records after the reload",
        Duration::from_secs(20),
        || {
            support::modbus::read_ndjson(&out)
                .iter()
                .any(|r| r.get("anomaly").is_some())
        },
    )
    .await;
    // A broken file replaces it: refused, the model in use keeps scoring.
    std::fs::write(&model, b"broken again").unwrap();
    hup(daemon.pid());
    wait_until("the refusal", Duration::from_secs(20), || {
        daemon
            .log_text()
            .contains("reload refused, the model in use stays")
    })
    .await;
    let scored_before = support::modbus::read_ndjson(&out)
        .iter()
        .filter(|r| r.get("anomaly").is_some())
        .count();
    wait_until("scoring to go on", Duration::from_secs(20), || {
        support::modbus::read_ndjson(&out)
            .iter()
            .filter(|r| r.get("anomaly").is_some())
            .count()
            > scored_before + 20
    })
    .await;
    assert!(daemon.is_running());
    assert_eq!(daemon.terminate(), Some(0));
    let log = daemon.log_text();
    assert!(
        log.contains("model pumps: now scoring with pump-demo 1"),
        "{log}"
    );
}

/// How a model written by [`write_dividing_by_zero_model`] divides the window's sum by zero.
#[derive(Clone, Copy)]
enum ZeroDivision {
    /// In floating point: every score is +∞.
    Float,
    /// In 64-bit integers, the sum taken of the window cast to integers: the engine
    /// refuses the run with an error.
    Integer,
}

/// An ONNX model, written here, that loads and divides the sum of each window by zero.
/// Input `x` [N, 4, 2], output `score` [N].
fn write_dividing_by_zero_model(path: &Path, division: ZeroDivision) {
    use prost::Message;
    use tract_onnx::pb;
    use tract_onnx::pb::tensor_shape_proto::{Dimension, dimension};

    let dims = |dims: &[dimension::Value]| {
        Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: 1, // FLOAT
                shape: Some(pb::TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| Dimension {
                            value: Some(d.clone()),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        })
    };
    let batch = dimension::Value::DimParam("N".into());
    let to = |elem_type| pb::AttributeProto {
        name: "to".into(),
        r#type: 2, // INT
        i: elem_type,
        ..Default::default()
    };
    let node = |op: &str, inputs: &[&str], output: &str, attribute| pb::NodeProto {
        op_type: op.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        attribute,
        ..Default::default()
    };
    let graph = pb::GraphProto {
        name: "infinite".into(),
        input: vec![pb::ValueInfoProto {
            name: "x".into(),
            r#type: dims(&[
                batch.clone(),
                dimension::Value::DimValue(4),
                dimension::Value::DimValue(2),
            ]),
            ..Default::default()
        }],
        output: vec![pb::ValueInfoProto {
            name: "score".into(),
            r#type: dims(&[batch]),
            ..Default::default()
        }],
        initializer: vec![match division {
            ZeroDivision::Float => pb::TensorProto {
                name: "zero".into(),
                data_type: 1, // FLOAT
                float_data: vec![0.0],
                ..Default::default()
            },
            ZeroDivision::Integer => pb::TensorProto {
                name: "zero".into(),
                data_type: 7, // INT64
                int64_data: vec![0],
                ..Default::default()
            },
        }],
        node: [
            match division {
                ZeroDivision::Float => node("Identity", &["x"], "summed", vec![]),
                ZeroDivision::Integer => node("Cast", &["x"], "summed", vec![to(7)]),
            },
            node(
                "ReduceSum",
                &["summed"],
                "sum",
                vec![
                    pb::AttributeProto {
                        name: "axes".into(),
                        r#type: 7, // INTS
                        ints: vec![1, 2],
                        ..Default::default()
                    },
                    pb::AttributeProto {
                        name: "keepdims".into(),
                        r#type: 2, // INT
                        i: 0,
                        ..Default::default()
                    },
                ],
            ),
            node("Div", &["sum", "zero"], "quotient", vec![]),
            match division {
                ZeroDivision::Float => node("Identity", &["quotient"], "score", vec![]),
                ZeroDivision::Integer => node("Cast", &["quotient"], "score", vec![to(1)]),
            },
        ]
        .into(),
        ..Default::default()
    };
    let model = pb::ModelProto {
        ir_version: 7,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 11,
        }],
        producer_name: "tidegate tests".into(),
        graph: Some(graph),
        ..Default::default()
    };
    std::fs::write(path, model.encode_to_vec()).unwrap();
}

/// A model that loads but fails at run time (`division`: a nonsense score, or a run the
/// engine refuses) is switched off with an ERROR giving `reason`, once, and the samples
/// keep flowing, unscored.
async fn a_model_failing_at_run_time_is_switched_off(division: ZeroDivision, reason: &str) {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("dividing-by-zero.onnx");
    write_dividing_by_zero_model(&model, division);
    let config = sim_config(dir.path(), &model.display().to_string());
    add_binding_keys(
        &config,
        "window = 4\nchannels = [\"flow_m3h\", \"pressure_bar\"]\n\
         mean = [0.0, 0.0]\nstd = [1.0, 1.0]\nthreshold = 1.0\nscore = \"output:score\"",
    );
    let check = check(&config);
    assert_eq!(
        check.status.code(),
        Some(0),
        "the model loads and fits: {}",
        String::from_utf8_lossy(&check.stderr)
    );

    let mut daemon = Daemon::start(&config, &dir.path().join("tidegate.log"));
    daemon
        .wait_log("the model switched off", Duration::from_secs(20), |t| {
            t.contains("ERROR model pumps:")
        })
        .await;
    let out = dir.path().join("records.ndjson");
    let at_switch_off = support::modbus::read_ndjson(&out).len();
    wait_until(
        "records after the switch-off",
        Duration::from_secs(20),
        || support::modbus::read_ndjson(&out).len() >= at_switch_off + 40,
    )
    .await;
    assert_eq!(daemon.terminate(), Some(0));
    let log = daemon.log_text();
    let error = log
        .lines()
        .find(|l| l.contains("ERROR model pumps:"))
        .unwrap();
    eprintln!("{error}");
    assert!(
        error.contains(reason)
            && error.contains("scoring switched off for this binding, raw data keeps flowing"),
        "{error}"
    );
    assert_eq!(
        log.matches("ERROR model pumps:").count(),
        1,
        "switched off once, not failing on every sample"
    );
    let records = support::modbus::read_ndjson(&out);
    assert!(
        records.iter().all(|r| r.get("anomaly").is_none()),
        "no sample carries the nonsense score"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_scoring_non_finite_values_is_switched_off_and_the_data_keeps_flowing() {
    a_model_failing_at_run_time_is_switched_off(
        ZeroDivision::Float,
        "the model returned a score that is not a finite number",
    )
    .await;
}

/// An integer division by zero: tract stops the run with an error, which names the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_run_that_fails_is_switched_off_and_the_data_keeps_flowing() {
    a_model_failing_at_run_time_is_switched_off(
        ZeroDivision::Integer,
        "\"quotient\" Div: Division by zero",
    )
    .await;
}
