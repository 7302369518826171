//! `tidegate check` against the config fixtures in `tests/fixtures/config`: every bad
//! fixture exits 78 with exactly the messages in its `expected.txt` (file, line, column,
//! key path); every good one exits 0 and never prints a secret.

use std::path::{Path, PathBuf};
use std::process::Command;

fn fixtures(kind: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/config")
        .join(kind);
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert!(!dirs.is_empty(), "no fixtures in {}", dir.display());
    dirs
}

fn check(dir: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tidegate"))
        .args(["check", "-c", "tidegate.toml"])
        .current_dir(dir)
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .unwrap()
}

#[test]
fn bad_configs_exit_78_with_file_line_and_key_path() {
    for dir in fixtures("bad") {
        let out = check(&dir);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{}: {stderr}", dir.display());
        let expected = std::fs::read_to_string(dir.join("expected.txt")).unwrap();
        assert_eq!(stderr.trim_end(), expected.trim_end(), "{}", dir.display());
        for line in stderr.lines().skip(1) {
            assert!(
                line.trim_start().starts_with("tidegate.toml:")
                    || line.trim_start().starts_with("conf.d/"),
                "every message names its file and line: {line}"
            );
        }
    }
}

#[test]
fn good_configs_pass_and_print_the_plan() {
    for dir in fixtures("good") {
        let out = check(&dir);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("config OK"), "{stdout}");
        assert!(
            stdout.contains("uplink "),
            "the plan lists the uplinks: {stdout}"
        );
    }
}

#[test]
fn secrets_are_printed_redacted() {
    let dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/config/good/secrets-by-file");
    let out = check(&dir);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("password <redacted>"), "{all}");
    assert!(all.contains("token <redacted>"), "{all}");
    assert!(!all.contains("s3cret-password"), "{all}");
    assert!(!all.contains("tok-123456"), "{all}");
}

#[test]
fn drop_ins_are_merged_in_order() {
    let dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/config/good/with-drop-ins");
    let out = check(&dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("config files: tidegate.toml, conf.d/20-archive.toml"),
        "{stdout}"
    );
    assert!(
        stdout.contains("max 64MiB"),
        "main file value kept: {stdout}"
    );
    assert!(
        stdout.contains("durability Interval every 250ms"),
        "drop-in value merged: {stdout}"
    );
    assert!(
        stdout.contains("uplink file \"archive\""),
        "drop-in array appended: {stdout}"
    );
}

#[test]
fn the_shipped_reference_and_example_configs_are_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let credentials = tempfile::tempdir().unwrap();
    std::fs::write(credentials.path().join("uplink-token"), "t0ken\n").unwrap();
    let mut files = vec![root.join("config/tidegate.toml")];
    for entry in std::fs::read_dir(root.join("config/examples")).unwrap() {
        files.push(entry.unwrap().path());
    }
    for file in files {
        let out = Command::new(env!("CARGO_BIN_EXE_tidegate"))
            .args(["check", "-c"])
            .arg(&file)
            .env("CREDENTIALS_DIRECTORY", credentials.path())
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn a_missing_config_file_is_a_config_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_tidegate"))
        .args(["check", "-c", "/nonexistent/tidegate.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent/tidegate.toml")
    );
}
