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
