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
