//! journald integration with the real daemon and the journal's native protocol: the
//! daemon, started with `$JOURNAL_STREAM` as systemd starts it, sends its entries to
//! `/run/systemd/journal/socket` — here a listener of the test's own, in a private mount
//! namespace so the machine's journal is not touched (needs root, as CI runs). Checks
//! priorities (what `journalctl -p warning` shows), the SOURCE/UPLINK/MODEL fields, and
//! that a failure repeated every 100 ms is one entry, not dozens.

use std::process::Command;
use std::time::Duration;

const LISTENER: &str = r#"
import socket, sys, json, struct
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
with open(sys.argv[2], "a") as f:
    while True:
        data = s.recv(1 << 20)
        fields, i = {}, 0
        while i < len(data):
            nl = data.index(b"\n", i)
            line = data[i:nl]
            if b"=" in line:
                k, v = line.split(b"=", 1)
                i = nl + 1
            else:
                k = line
                n = struct.unpack("<Q", data[nl + 1:nl + 9])[0]
                v = data[nl + 9:nl + 9 + n]
                i = nl + 9 + n + 1
            fields[k.decode()] = v.decode(errors="replace")
        if fields:
            f.write(json.dumps(fields) + "\n")
            f.flush()
"#;

#[test]
fn journal_entries_carry_priorities_and_what_they_are_about() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("listener.py"), LISTENER).unwrap();
    std::fs::write(
        d.join("tidegate.toml"),
        format!(
            r#"
[gateway]
id = "gw"
state_dir = "{state}"

[[sources.simulated]]
name = "plant"
devices = 1
interval = "100ms"

[[models]]
name = "pumps"
path = "{state}/missing.onnx"
devices = ["pump-*"]

[[uplinks.http]]
name = "cloud"
url = "http://127.0.0.1:9/ingest"
backoff_min = "100ms"
backoff_max = "100ms"
"#,
            state = d.join("state").display()
        ),
    )
    .unwrap();
    let out = d.join("journal.jsonl");
    std::fs::create_dir_all("/run/systemd").unwrap();
    let script = format!(
        "mount -t tmpfs tmpfs /run/systemd && mkdir -p /run/systemd/journal \
         && (python3 {listener} /run/systemd/journal/socket {out} &) && sleep 0.5 \
         && exec 2>{stderr} && export JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2) \
         && exec timeout --preserve-status -s TERM 3 {bin} run -c {config}",
        listener = d.join("listener.py").display(),
        out = out.display(),
        stderr = d.join("stderr.log").display(),
        bin = env!("CARGO_BIN_EXE_tidegate"),
        config = d.join("tidegate.toml").display(),
    );
    let status = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .status()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let _ = Command::new("pkill")
        .args(["-f", &d.join("listener.py").display().to_string()])
        .status();
    assert_eq!(
        status.code(),
        Some(0),
        "the daemon stopped cleanly on SIGTERM"
    );
    let entries: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        !entries.is_empty(),
        "entries reach the journal socket (stderr: {})",
        std::fs::read_to_string(d.join("stderr.log")).unwrap_or_default()
    );
    let find = |text: &str| {
        entries
            .iter()
            .find(|e| e["MESSAGE"].as_str().unwrap_or("").contains(text))
            .unwrap_or_else(|| panic!("an entry with {text:?}"))
            .clone()
    };
    let ready = find("ready");
    let uplink = find("backend unavailable");
    let model = find("model pumps:");
    eprintln!(
        "{} entries; e.g.\n  {ready}\n  {uplink}\n  {model}",
        entries.len()
    );
    assert_eq!(ready["SYSLOG_IDENTIFIER"], "tidegate");
    assert_eq!(uplink["PRIORITY"], "4", "WARN is warning");
    assert_eq!(uplink["UPLINK"], "cloud");
    assert_eq!(model["PRIORITY"], "3", "ERROR is err");
    assert_eq!(model["MODEL"], "pumps");
    assert!(
        ready["PRIORITY"].as_str().unwrap().parse::<u8>().unwrap() > 4,
        "INFO is not shown by -p warning"
    );
    let repeats = entries
        .iter()
        .filter(|e| e["UPLINK"] == "cloud" && e["PRIORITY"] == "4")
        .count();
    assert_eq!(
        repeats, 1,
        "an uplink failing every 100 ms is logged once per change of state"
    );
}
