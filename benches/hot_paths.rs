//! Micro-benchmarks (criterion) of the paths every sample takes: MQTT payload decode,
//! Modbus register decode, window normalisation and inference, record frame encode,
//! store append and read, batch encode with gzip.
//!
//! Run: `cargo bench --bench hot_paths` (HTML reports in target/criterion/).

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use tidegate::config::{self, FullPolicy, SystemEnvironment};
use tidegate::pipeline::{contract::Overrides, model};
use tidegate::sample::{Record, RecordForm, Sample, Value};
use tidegate::sources::modbus::decode::{ByteOrder, DataType, Decoding, decode_registers};
use tidegate::sources::mqtt::decode;
use tidegate::store::{Lane, LogStore, Store, StoreOptions, frame};
use tidegate::uplink::body;

const PAYLOAD: &[u8] = br#"{"ts": 1764340000123, "flow_m3h": 36.51, "pressure_bar": 5.105, "temperature_c": 51.58, "vibration_mm_s": 2.19, "current_a": 12.86, "speed_hz": 49.9, "power_kw": 7.31, "running": true}"#;

fn sample(i: u64) -> Sample {
    let mut s = Sample::new(
        "plant",
        format!("pump-{}", i % 100),
        1_764_340_000_000 + i as i64,
    );
    for (k, name) in [
        "flow_m3h",
        "pressure_bar",
        "temperature_c",
        "vibration_mm_s",
        "current_a",
        "speed_hz",
        "power_kw",
    ]
    .iter()
    .enumerate()
    {
        s.fields
            .insert((*name).into(), Value::Float(i as f64 * 0.01 + k as f64));
    }
    s.fields.insert("running".into(), Value::Bool(true));
    s
}

fn mqtt_decode(c: &mut Criterion) {
    let config = config::from_str(
        "bench.toml",
        r#"
[gateway]
id = "gw"
state_dir = "/tmp/tidegate-bench"
[[sources.mqtt]]
name = "local"
[[sources.mqtt.subscriptions]]
filter = "plant/+/+/telemetry"
topic_template = "plant/{line}/{device}/telemetry"
timestamp_field = "ts"
[[uplinks.stdout]]
name = "console"
"#,
        &SystemEnvironment,
    )
    .unwrap();
    let sub = config.mqtt_sources[0].subscriptions[0].clone();
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(1));
    let mut names = tidegate::sources::mqtt::Names::default();
    g.bench_function("mqtt json payload, 8 fields", |b| {
        b.iter(|| {
            decode::decode(
                "local",
                black_box("plant/l1/pump-7/telemetry"),
                black_box(PAYLOAD),
                0,
                &sub,
                1 << 20,
                &mut names,
            )
            .unwrap()
        })
    });
    let f32_cdab = Decoding {
        order: ByteOrder::CDAB,
        scale: 0.1,
        ..Decoding::plain(DataType::F32)
    };
    g.bench_function("modbus f32 CDAB scaled", |b| {
        b.iter(|| decode_registers(black_box(&[0x0000, 0x4120]), &f32_cdab).unwrap())
    });
    let u16 = Decoding::plain(DataType::U16);
    g.bench_function("modbus u16", |b| {
        b.iter(|| decode_registers(black_box(&[1234]), &u16).unwrap())
    });
    g.finish();
}

fn inference(c: &mut Criterion) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/pump-demo.onnx");
    let loaded = model::load(&path, &Overrides::default(), "bench").unwrap();
    let (w, ch) = (loaded.contract.window, loaded.contract.channels.len());
    let mut g = c.benchmark_group("inference");
    for batch in [1usize, 64] {
        let raw: Vec<f32> = (0..batch * w * ch)
            .map(|i| 30.0 + (i % 17) as f32)
            .collect();
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_function(format!("normalise + score, batch {batch}"), |b| {
            b.iter_batched(
                || raw.clone(),
                |mut windows| {
                    loaded.normalise(&mut windows);
                    loaded.score(&windows, batch).unwrap()
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn records(c: &mut Criterion) {
    let mut g = c.benchmark_group("records");
    let s = sample(7);
    g.throughput(Throughput::Elements(1));
    g.bench_function("frame encode", |b| {
        let mut buf = Vec::with_capacity(4096);
        b.iter(|| {
            buf.clear();
            frame::encode_into(&mut buf, 1, 1, 0, black_box(&s))
        })
    });
    let batch: Vec<Record> = (0..500).map(|i| Record::new(i, sample(i))).collect();
    g.throughput(Throughput::Elements(500));
    g.bench_function("batch of 500: JSON + gzip", |b| {
        b.iter(|| body::encode("gw", black_box(&batch), true))
    });
    g.finish();
}

fn store(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(
        dir.path(),
        &["cloud".to_string()],
        StoreOptions::new(8 << 30, FullPolicy::DropOldest),
    )
    .unwrap();
    let entries: Vec<(Lane, Sample)> = (0..256).map(|i| (Lane::Main, sample(i))).collect();
    let mut g = c.benchmark_group("store");
    g.throughput(Throughput::Elements(256));
    g.bench_function("append 256, no fsync", |b| {
        b.iter(|| store.append(black_box(&entries), false).unwrap())
    });
    g.bench_function("append 256, fsync (group commit)", |b| {
        b.iter(|| store.append(black_box(&entries), true).unwrap())
    });
    // The reads below need 500 records whether or not the append benches ran (a filter
    // or `--list` skips them).
    store.append(&entries, false).unwrap();
    store.append(&entries, false).unwrap();
    store.flush().unwrap();
    g.throughput(Throughput::Elements(500));
    g.bench_function("read 500 (decode included)", |b| {
        b.iter(|| store.read("cloud", 500).unwrap().unwrap())
    });
    // What the HTTP uplink does: records as stored, spliced into the batch body.
    g.bench_function("read 500 as stored JSON", |b| {
        b.iter(|| {
            store
                .read_as("cloud", 500, RecordForm::Json)
                .unwrap()
                .unwrap()
        })
    });
    let stored = store
        .read_as("cloud", 500, RecordForm::Json)
        .unwrap()
        .unwrap();
    g.bench_function("batch of 500 as stored: JSON + gzip", |b| {
        b.iter(|| body::encode("gw", black_box(&stored.records), true))
    });
    g.finish();
}

criterion_group!(benches, mqtt_decode, inference, records, store);
criterion_main!(benches);
