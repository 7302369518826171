//! The shipped service unit, checked with systemd's own tools.

use std::process::Command;

#[test]
fn the_service_unit_is_hardened_to_an_exposure_of_at_most_2() {
    let unit = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/tidegate.service");
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager", unit])
        .output()
        .expect("systemd-analyze must be installed (apt-get install systemd); .ci/run installs it");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| {
            panic!(
                "no exposure line in:\n{text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let score: f64 = line
        .split(':')
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the score in: {line}"));
    eprintln!("{}", line.trim());
    assert!(score <= 2.0, "{line}");
}

#[test]
fn the_unit_does_not_restart_on_a_config_error_and_lets_serial_ports_through() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/tidegate.service"
    ))
    .unwrap();
    assert!(unit.contains("RestartPreventExitStatus=78"));
    assert!(unit.contains("Type=notify"));
    assert!(unit.contains("SupplementaryGroups=dialout"));
    assert!(unit.contains("ExecStartPre=/usr/bin/tidegate check --skip-models"));
}

#[test]
fn systemd_analyze_verify_finds_nothing_to_say() {
    // verify needs the binaries the unit runs to exist: this build's, in a copy.
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/tidegate.service"
    ))
    .unwrap()
    .replace("/usr/bin/tidegate", env!("CARGO_BIN_EXE_tidegate"));
    let path = dir.path().join("tidegate.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze must be installed");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Unknown or invalid settings are only warnings to verify: any output is a finding.
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
}

#[test]
fn the_unit_has_a_watchdog_and_reloads_with_sighup() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/tidegate.service"
    ))
    .unwrap();
    assert!(unit.contains("WatchdogSec="));
    assert!(unit.contains("ExecReload=/bin/kill -HUP $MAINPID"));
    assert!(unit.contains("StateDirectory=tidegate"));
    assert!(unit.contains("ConfigurationDirectory=tidegate"));
}

/// The unit sets `MemoryDenyWriteExecute=yes`: memory can never be writable and
/// executable, as a JIT would need. systemd enforces it with the kernel's
/// `PR_SET_MDWE` where it has it (Linux 6.3+); here the same prctl is set before the
/// demo runs (the simulated plant, Modbus polling, the ONNX model), to show that the
/// inference engine and everything else work under it.
#[test]
fn the_gateway_runs_and_scores_under_memory_deny_write_execute() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo.ndjson");
    let script = format!(
        "import ctypes, os, sys\n\
         libc = ctypes.CDLL(None, use_errno=True)\n\
         if libc.prctl(65, 1, 0, 0, 0) != 0:\n    sys.exit('PR_SET_MDWE is not available: ' + os.strerror(ctypes.get_errno()))\n\
         assert libc.prctl(66, 0, 0, 0, 0) == 1\n\
         os.execv('{bin}', ['{bin}', 'demo', '--duration', '4s', '--interval', '100ms', '--out', '{out}'])\n",
        bin = env!("CARGO_BIN_EXE_tidegate"),
        out = out.display()
    );
    let run = Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("python3 runs the prctl wrapper");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    let records: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let scored = records
        .iter()
        .filter(|r| r.get("anomaly").is_some())
        .count();
    eprintln!(
        "under PR_SET_MDWE: {} records, {scored} scored by the model",
        records.len()
    );
    assert!(scored > 0, "the model scores under W^X: {stderr}");
    assert!(!stderr.contains("ERROR"), "{stderr}");
}
