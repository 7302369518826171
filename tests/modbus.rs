//! The Modbus master against real Modbus servers: tokio-modbus on 127.0.0.1 for TCP, and
//! over a socat pty pair for RTU, with fault injection. The gateway is the `tidegate`
//! binary; records are read back from its NDJSON file uplink.

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use support::modbus::*;
use support::*;
use tokio_modbus::ExceptionCode;
use tokio_util::sync::CancellationToken;

fn config(dir: &Path, source: &str) -> std::path::PathBuf {
    write_test_config(
        dir,
        &format!(
            r#"

{source}

[[uplinks.file]]
name = "archive"
path = "{out}"
linger = "100ms"
"#,
            out = dir.join("records.ndjson").display()
        ),
    )
}

fn records_of(dir: &Path, device: &str) -> Vec<Value> {
    read_ndjson(&dir.join("records.ndjson"))
        .into_iter()
        .filter(|r| r["device"] == device)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_and_byte_order_decodes_as_the_device_encodes_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut unit = Unit::default();
    let mut points = Vec::new();
    let mut expected: HashMap<String, Value> = HashMap::new();
    let mut address = 0u16;
    let mut add = |unit: &mut Unit,
                   name: String,
                   t: &str,
                   order: &str,
                   be: Vec<u8>,
                   value: Value| {
        let words = encode(&be, order);
        unit.set_holding(address, &words);
        points.push(format!(
            "  {{ name = \"{name}\", address = {address}, table = \"holding\", type = \"{t}\", byte_order = \"{order}\" }},"
        ));
        expected.insert(name, value);
        address += words.len() as u16 + 1;
    };
    for order in ["ABCD", "CDAB", "BADC", "DCBA"] {
        let o = order.to_lowercase();
        add(
            &mut unit,
            format!("u16_{o}"),
            "u16",
            order,
            51_234u16.to_be_bytes().to_vec(),
            json!(51_234),
        );
        add(
            &mut unit,
            format!("i16_{o}"),
            "i16",
            order,
            (-1234i16).to_be_bytes().to_vec(),
            json!(-1234),
        );
        add(
            &mut unit,
            format!("u32_{o}"),
            "u32",
            order,
            3_000_000_123u32.to_be_bytes().to_vec(),
            json!(3_000_000_123u32),
        );
        add(
            &mut unit,
            format!("i32_{o}"),
            "i32",
            order,
            (-123_456_789i32).to_be_bytes().to_vec(),
            json!(-123_456_789),
        );
        add(
            &mut unit,
            format!("u64_{o}"),
            "u64",
            order,
            1_234_567_890_123u64.to_be_bytes().to_vec(),
            json!(1_234_567_890_123u64),
        );
        add(
            &mut unit,
            format!("i64_{o}"),
            "i64",
            order,
            (-9_876_543_210i64).to_be_bytes().to_vec(),
            json!(-9_876_543_210i64),
        );
        add(
            &mut unit,
            format!("f32_{o}"),
            "f32",
            order,
            12.375f32.to_be_bytes().to_vec(),
            json!(12.375),
        );
        add(
            &mut unit,
            format!("f64_{o}"),
            "f64",
            order,
            (-0.000_123_456_789f64).to_be_bytes().to_vec(),
            json!(-0.000_123_456_789),
        );
    }
    // A string, a scaled value, a bit of a register, a coil and a discrete input.
    unit.set_holding(500, &encode(b"LINE-7\0\0", "ABCD"));
    unit.set_input(10, &[65_000]);
    unit.set_holding(600, &[0b0000_0000_0010_0000]);
    unit.coils.insert(3, true);
    unit.discrete.insert(9, true);
    points
        .push("  { name = \"label\", address = \"40501\", type = \"string\", length = 4 },".into());
    points.push(
        "  { name = \"temp_c\", address = \"30011\", type = \"i16\", scale = 0.1, offset = 10.0 },"
            .into(),
    );
    points.push("  { name = \"bit5\", address = \"40601\", type = \"bool\", bit = 5 },".into());
    points.push("  { name = \"bit4\", address = \"40601\", type = \"bool\", bit = 4 },".into());
    points.push("  { name = \"coil3\", address = \"00004\" },".into());
    points.push("  { name = \"di9\", address = \"10010\" },".into());
    expected.insert("label".into(), json!("LINE-7"));
    expected.insert("temp_c".into(), json!(-53.6 + 10.0));
    expected.insert("bit5".into(), json!(true));
    expected.insert("bit4".into(), json!(false));
    expected.insert("coil3".into(), json!(true));
    expected.insert("di9".into(), json!(true));

    let devices = Devices::new(HashMap::from([(1, unit)]));
    let stop = CancellationToken::new();
    let address = serve_tcp(devices.clone(), stop.clone()).await;
    let source = format!(
        "[[sources.modbus_tcp]]\nname = \"plc\"\nhost = \"127.0.0.1\"\nport = {}\n\n\
         [[sources.modbus_tcp.devices]]\nname = \"dev\"\nunit = 1\npoll_interval = \"200ms\"\nmax_gap = 1\npoints = [\n{}\n]\n",
        address.port(),
        points.join("\n")
    );
    let mut daemon = Daemon::start(
        &config(dir.path(), &source),
        &dir.path().join("tidegate.log"),
    );
    wait_until("records", Duration::from_secs(20), || {
        records_of(dir.path(), "dev").len() >= 3
    })
    .await;
    assert_eq!(daemon.terminate(), Some(0));

    let record = &records_of(dir.path(), "dev")[0];
    assert!(record.get("quality").is_none(), "{record}");
    let fields = record["fields"].as_object().unwrap();
    let mut mismatches = Vec::new();
    for (name, want) in &expected {
        let got = &fields[name];
        let same = match (got.as_f64(), want.as_f64()) {
            (Some(g), Some(w)) if want.is_f64() => (g - w).abs() <= w.abs() * 1e-12 + 1e-12,
            _ => got == want,
        };
        if !same {
            mismatches.push(format!("{name}: got {got}, want {want}"));
        }
    }
    eprintln!(
        "decoded {} points, {} mismatches",
        expected.len(),
        mismatches.len()
    );
    assert!(mismatches.is_empty(), "{mismatches:#?}");
    assert_eq!(fields.len(), expected.len());
    let codes = devices.function_codes();
    assert!(
        codes.iter().all(|c| (1..=4).contains(c)),
        "only read function codes: {codes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exceptions_become_quality_and_spare_the_other_points() {
    let dir = tempfile::tempdir().unwrap();
    let mut unit = Unit::default();
    unit.set_holding(0, &[11, 22]);
    unit.set_input(0, &[33]);
    unit.exceptions
        .insert((3, 100), ExceptionCode::IllegalDataAddress);
    unit.exceptions
        .insert((4, 50), ExceptionCode::ServerDeviceFailure);
    let devices = Devices::new(HashMap::from([(7, unit)]));
    let stop = CancellationToken::new();
    let address = serve_tcp(devices.clone(), stop.clone()).await;
    let source = format!(
        r#"[[sources.modbus_tcp]]
name = "plc"
host = "127.0.0.1"
port = {}

[[sources.modbus_tcp.devices]]
name = "dev"
unit = 7
poll_interval = "100ms"
points = [
  {{ name = "a", address = "40001" }},
  {{ name = "b", address = "40002" }},
  {{ name = "c", address = "30001" }},
  {{ name = "missing", address = "40101" }},
  {{ name = "broken", address = "30051" }},
]
"#,
        address.port()
    );
    let mut daemon = Daemon::start(
        &config(dir.path(), &source),
        &dir.path().join("tidegate.log"),
    );
    wait_until("ten polls", Duration::from_secs(20), || {
        records_of(dir.path(), "dev").len() >= 10
    })
    .await;
    assert_eq!(daemon.terminate(), Some(0));
    let records = records_of(dir.path(), "dev");
    for record in &records {
        assert_eq!(record["fields"]["a"], 11);
        assert_eq!(record["fields"]["b"], 22);
        assert_eq!(record["fields"]["c"], 33);
        let q = &record["field_quality"];
        assert_eq!(q["missing"]["reason"], "exception", "{record}");
        assert!(
            q["missing"]["detail"]
                .as_str()
                .unwrap()
                .starts_with("exception 02 (illegal data address)")
        );
        assert!(
            q["broken"]["detail"]
                .as_str()
                .unwrap()
                .starts_with("exception 04 (server device failure)")
        );
    }
    let polls = records.len();
    let asked_02 = devices.requests_to(7, 3, 100);
    let asked_04 = devices.requests_to(7, 4, 50);
    eprintln!(
        "{polls} polls: the 02 block was asked {asked_02} times, the 04 block {asked_04} times"
    );
    assert_eq!(
        asked_02, 1,
        "a permanent exception is not retried every poll"
    );
    assert!(
        asked_04 >= polls,
        "a transient exception is tried again each poll"
    );
    let log = daemon.log_text();
    assert_eq!(
        log.matches("refused FC03 holding register 100..=100")
            .count(),
        1,
        "logged once: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_replies_on_tcp_are_never_attributed_to_the_next_request() {
    let dir = tempfile::tempdir().unwrap();
    let mut slow = Unit::default();
    slow.set_holding(0, &[1001]);
    slow.late_every = Some((3, Duration::from_millis(450)));
    let mut fast = Unit::default();
    fast.set_holding(0, &[2002]);
    let devices = Devices::new(HashMap::from([(1, slow), (2, fast)]));
    let stop = CancellationToken::new();
    let address = serve_tcp(devices.clone(), stop.clone()).await;
    let device = |name: &str, unit: u8| {
        format!(
            "[[sources.modbus_tcp.devices]]\nname = \"{name}\"\nunit = {unit}\npoll_interval = \"100ms\"\ntimeout = \"300ms\"\n\
             points = [{{ name = \"id\", address = \"40001\" }}]\n"
        )
    };
    let source = format!(
        "[[sources.modbus_tcp]]\nname = \"gateway\"\nhost = \"127.0.0.1\"\nport = {}\n\n{}\n{}",
        address.port(),
        device("slow", 1),
        device("fast", 2)
    );
    let mut daemon = Daemon::start(
        &config(dir.path(), &source),
        &dir.path().join("tidegate.log"),
    );
    wait_until("late replies to happen", Duration::from_secs(30), || {
        records_of(dir.path(), "slow")
            .iter()
            .filter(|r| r["quality"]["reason"] == "timeout")
            .count()
            >= 4
    })
    .await;
    assert_eq!(daemon.terminate(), Some(0));
    let (mut good, mut timeouts, mut wrong) = (0, 0, 0);
    for (device, id) in [("slow", 1001), ("fast", 2002)] {
        for r in records_of(dir.path(), device) {
            match r["fields"]["id"].as_i64() {
                Some(v) if v == id => good += 1,
                Some(_) => wrong += 1,
                None => timeouts += 1,
            }
        }
    }
    eprintln!(
        "{good} good values, {timeouts} timeouts, {wrong} values attributed to the wrong request"
    );
    assert_eq!(wrong, 0);
    assert!(timeouts >= 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_with_too_few_registers_gives_no_values_and_polling_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut unit = Unit::default();
    unit.set_holding(0, &[11, 12, 13, 14]);
    unit.short_every = Some(3);
    let devices = Devices::new(HashMap::from([(1, unit)]));
    let stop = CancellationToken::new();
    let address = serve_tcp(devices.clone(), stop.clone()).await;
    let source = format!(
        "[[sources.modbus_tcp]]\nname = \"plc\"\nhost = \"127.0.0.1\"\nport = {}\n\n\
         [[sources.modbus_tcp.devices]]\nname = \"meter\"\npoll_interval = \"50ms\"\ntimeout = \"300ms\"\n\
         points = [{{ name = \"a\", address = \"40001\" }}, {{ name = \"b\", address = \"40002\" }}, \
                   {{ name = \"c\", address = \"40003\" }}, {{ name = \"d\", address = \"40004\" }}]\n",
        address.port()
    );
    let mut daemon = Daemon::start(
        &config(dir.path(), &source),
        &dir.path().join("tidegate.log"),
    );
    wait_until(
        "short answers and good ones",
        Duration::from_secs(30),
        || {
            let records = records_of(dir.path(), "meter");
            records
                .iter()
                .filter(|r| r.get("quality").is_some())
                .count()
                >= 3
                && records
                    .iter()
                    .filter(|r| r.get("quality").is_none())
                    .count()
                    >= 6
        },
    )
    .await;
    assert_eq!(daemon.terminate(), Some(0));
    let (mut good, mut refused) = (0, 0);
    for r in records_of(dir.path(), "meter") {
        if r.get("quality").is_none() {
            // Every good sample holds the four registers, each in its own field.
            assert_eq!(
                r["fields"],
                serde_json::json!({"a": 11, "b": 12, "c": 13, "d": 14})
            );
            good += 1;
        } else {
            // A short answer gives no values at all, and says why.
            assert!(r["fields"].as_object().unwrap().is_empty(), "{r}");
            let detail = r["quality"]["detail"].as_str().unwrap();
            assert!(
                detail.contains("answer of 3 registers to a read of 4"),
                "{detail}"
            );
            refused += 1;
        }
    }
    eprintln!("{good} good polls, {refused} short answers refused");
    // Polling went on after each short answer: good polls outnumber them.
    assert!(good >= 6 && refused >= 3, "{good} good, {refused} refused");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cuts_are_survived_without_leaking_descriptors() {
    let dir = tempfile::tempdir().unwrap();
    let mut unit = Unit::default();
    unit.set_holding(0, &[42]);
    let devices = Devices::new(HashMap::from([(1, unit)]));
    let stop = CancellationToken::new();
    let address = serve_tcp(devices.clone(), stop.clone()).await;
    let proxy = FlakyProxy::start(address).await;
    let source = format!(
        "[[sources.modbus_tcp]]\nname = \"plc\"\nhost = \"127.0.0.1\"\nport = {}\n\n\
         [[sources.modbus_tcp.devices]]\nname = \"dev\"\npoll_interval = \"50ms\"\ntimeout = \"300ms\"\n\
         points = [{{ name = \"v\", address = \"40001\" }}]\n",
        proxy.address.port()
    );
    let mut daemon = Daemon::start(
        &config(dir.path(), &source),
        &dir.path().join("tidegate.log"),
    );
    wait_until("first records", Duration::from_secs(20), || {
        records_of(dir.path(), "dev").len() >= 5
    })
    .await;
    let fds_before = open_fds(daemon.pid());
    let cuts = 25;
    for _ in 0..cuts {
        proxy.cut_all();
        tokio::time::sleep(Duration::from_millis(120)).await;
    }
    let count_after_cuts = records_of(dir.path(), "dev").len();
    wait_until("records after the cuts", Duration::from_secs(20), || {
        records_of(dir.path(), "dev").len() >= count_after_cuts + 10
    })
    .await;
    let fds_after = open_fds(daemon.pid());
    assert_eq!(daemon.terminate(), Some(0));
    let connections = *proxy.connections.lock().unwrap();
    eprintln!("{cuts} cuts, {connections} connections made, open fds {fds_before} -> {fds_after}");
    assert!(connections >= 10, "it reconnected after the cuts");
    assert!(
        fds_after <= fds_before + 2,
        "descriptors leak: {fds_before} -> {fds_after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_unit_on_a_serial_line_does_not_stall_its_neighbours() {
    let dir = tempfile::tempdir().unwrap();
    let pty = PtyPair::new(dir.path());
    let mut units = HashMap::new();
    for id in 1..=3u8 {
        let mut unit = Unit::default();
        unit.set_holding(0, &[u16::from(id) * 100]);
        unit.set_holding(1, &encode(&1.5f32.to_be_bytes(), "CDAB"));
        units.insert(id, unit);
    }
    units.get_mut(&3).unwrap().silent = true;
    let devices = Devices::new(units);
    let stop = CancellationToken::new();
    serve_rtu(devices.clone(), &pty, stop.clone());
    let device = |id: u8| {
        format!(
            "[[sources.modbus_rtu.devices]]\nname = \"unit-{id}\"\nunit = {id}\npoll_interval = \"250ms\"\ntimeout = \"200ms\"\n\
             points = [{{ name = \"id\", address = \"40001\" }}, {{ name = \"x\", address = \"40002\", type = \"f32\", byte_order = \"CDAB\" }}]\n"
        )
    };
    let source = format!(
        "[[sources.modbus_rtu]]\nname = \"line\"\ndevice = \"{}\"\nbaud = 19200\nparity = \"none\"\n\n{}\n{}\n{}",
        pty.gateway_end.display(),
        device(1),
        device(2),
        device(3)
    );
    let mut daemon = Daemon::start(
        &config(dir.path(), &source),
        &dir.path().join("tidegate.log"),
    );
    wait_until("the line to run", Duration::from_secs(20), || {
        records_of(dir.path(), "unit-1").len() >= 2
    })
    .await;
    let start_counts: Vec<usize> = (1..=2)
        .map(|i| records_of(dir.path(), &format!("unit-{i}")).len())
        .collect();
    let window = Duration::from_secs(5);
    tokio::time::sleep(window).await;
    let end_counts: Vec<usize> = (1..=2)
        .map(|i| records_of(dir.path(), &format!("unit-{i}")).len())
        .collect();
    assert_eq!(daemon.terminate(), Some(0));
    let expected = window.as_secs_f64() / 0.25;
    for i in 0..2 {
        let polls = end_counts[i] - start_counts[i];
        eprintln!(
            "unit-{}: {polls} polls in {window:?} (schedule: {expected:.0})",
            i + 1
        );
        // Generous: this is not a timing benchmark, it shows the dead unit is not taking a
        // timeout out of every sweep (which would halve the healthy units' rate).
        assert!(
            polls as f64 >= expected * 0.7,
            "unit-{} polled {polls} times",
            i + 1
        );
    }
    for id in 1..=2u8 {
        for r in records_of(dir.path(), &format!("unit-{id}")) {
            assert_eq!(r["fields"]["id"], i64::from(id) * 100, "{r}");
            assert_eq!(r["fields"]["x"], 1.5);
        }
    }
    let silent = records_of(dir.path(), "unit-3");
    assert!(
        silent.iter().all(|r| r["quality"]["reason"] == "timeout"),
        "{silent:?}"
    );
    let log = daemon.log_text();
    assert!(
        log.contains("device unit-3 (unit 3) stopped answering"),
        "{log}"
    );
    assert!(
        log.contains("device unit-3 failed 3 polls in a row"),
        "{log}"
    );
    let codes = devices.function_codes();
    assert!(codes.iter().all(|c| (1..=4).contains(c)), "{codes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_replies_on_a_serial_line_are_drained_not_misread() {
    let dir = tempfile::tempdir().unwrap();
    let pty = PtyPair::new(dir.path());
    let mut slow = Unit::default();
    slow.set_holding(0, &[111]);
    slow.late_every = Some((2, Duration::from_millis(300)));
    let mut fast = Unit::default();
    fast.set_holding(0, &[222]);
    let devices = Devices::new(HashMap::from([(1, slow), (2, fast)]));
    let stop = CancellationToken::new();
    serve_rtu(devices.clone(), &pty, stop.clone());
    let device = |name: &str, id: u8| {
        format!(
            "[[sources.modbus_rtu.devices]]\nname = \"{name}\"\nunit = {id}\npoll_interval = \"150ms\"\ntimeout = \"200ms\"\n\
             points = [{{ name = \"id\", address = \"40001\" }}]\n"
        )
    };
    let source = format!(
        "[[sources.modbus_rtu]]\nname = \"line\"\ndevice = \"{}\"\nparity = \"none\"\n\n{}\n{}",
        pty.gateway_end.display(),
        device("slow", 1),
        device("fast", 2)
    );
    let mut daemon = Daemon::start(
        &config(dir.path(), &source),
        &dir.path().join("tidegate.log"),
    );
    wait_until("several late replies", Duration::from_secs(30), || {
        records_of(dir.path(), "slow")
            .iter()
            .filter(|r| r["quality"]["reason"] == "timeout")
            .count()
            >= 4
    })
    .await;
    assert_eq!(daemon.terminate(), Some(0));
    let mut wrong = 0;
    let mut good = 0;
    for (name, id) in [("slow", 111), ("fast", 222)] {
        for r in records_of(dir.path(), name) {
            match r["fields"]["id"].as_i64() {
                Some(v) if v == id => good += 1,
                Some(_) => wrong += 1,
                None => {}
            }
        }
    }
    eprintln!("{good} good values, {wrong} attributed to the wrong request");
    assert_eq!(wrong, 0);
    assert!(good > 0);
}

fn probe(args: Vec<String>) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tidegate"))
        .args(["probe", "modbus"])
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_shows_every_decoding_and_scan_finds_the_units_on_a_line() {
    let mut unit = Unit::default();
    unit.set_holding(0, &encode(&1.5f32.to_be_bytes(), "CDAB"));
    let devices = Devices::new(HashMap::from([(5, unit)]));
    let stop = CancellationToken::new();
    let address = serve_tcp(devices.clone(), stop.clone()).await;
    let args = vec![
        "--tcp".to_string(),
        address.to_string(),
        "--unit".into(),
        "5".into(),
        "--address".into(),
        "40001".into(),
        "--count".into(),
        "2".into(),
    ];
    let out = tokio::task::spawn_blocking(move || probe(args))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cdab = stdout
        .lines()
        .find(|l| l.split_whitespace().take(2).collect::<Vec<_>>() == ["0", "CDAB"])
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(cdab.trim_end().ends_with(" 1.5"), "{cdab}");

    let dir = tempfile::tempdir().unwrap();
    let pty = PtyPair::new(dir.path());
    let mut with_exception = Unit::default();
    with_exception
        .exceptions
        .insert((3, 0), ExceptionCode::IllegalDataAddress);
    let line = Devices::new(HashMap::from([(2, Unit::default()), (9, with_exception)]));
    serve_rtu(line.clone(), &pty, stop.clone());
    let args = vec![
        "--rtu".to_string(),
        pty.gateway_end.display().to_string(),
        "--scan".into(),
        "--units".into(),
        "1-10".into(),
        "--timeout".into(),
        "100ms".into(),
    ];
    let out = tokio::task::spawn_blocking(move || probe(args))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(stdout.contains("unit   2: answers"), "{stdout}");
    assert!(
        stdout.contains("unit   9: answers, with exception 02"),
        "{stdout}"
    );
    assert!(stdout.contains("2 of 10 unit ids answered"), "{stdout}");
    assert!(line.function_codes().iter().all(|c| *c == 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_device_is_retried_while_trusted_and_probed_once_when_not() {
    let dir = tempfile::tempdir().unwrap();
    let dead = Unit {
        silent: true,
        ..Unit::default()
    };
    let devices = Devices::new(HashMap::from([(1, dead)]));
    let stop = CancellationToken::new();
    let address = serve_tcp(devices.clone(), stop.clone()).await;
    let source = format!(
        "[[sources.modbus_tcp]]\nname = \"plc\"\nhost = \"127.0.0.1\"\nport = {}\n\
         [[sources.modbus_tcp.devices]]\nname = \"dead\"\npoll_interval = \"200ms\"\ntimeout = \"100ms\"\nretries = 2\n\
         points = [{{ name = \"v\", address = \"40001\" }}]\n",
        address.port()
    );
    let mut daemon = Daemon::start(
        &config(dir.path(), &source),
        &dir.path().join("tidegate.log"),
    );
    daemon
        .wait_log("the breaker to open", Duration::from_secs(20), |t| {
            t.contains("device dead failed 3 polls in a row")
        })
        .await;
    // Probes after 1 s and then 2 s more.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    assert_eq!(daemon.terminate(), Some(0));
    let polls = records_of(dir.path(), "dead").len();
    let requests = devices.requests_to(1, 3, 0);
    eprintln!("{polls} polls made, {requests} requests sent");
    assert!(
        polls >= 5,
        "at least two probes after the three failed polls: {polls}"
    );
    // Three polls of three tries each, then one request per probe (a probe cut short by
    // the stop has sent its request but left no record).
    let expected = 3 * 3 + (polls - 3);
    assert!(
        requests == expected || requests == expected + 1,
        "{requests} requests for {polls} polls, expected {expected}"
    );
}
