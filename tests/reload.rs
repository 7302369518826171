//! SIGHUP with the real daemon: a valid new config restarts exactly the sources and
//! uplinks that changed, starts the new ones, stops the removed ones and leaves the rest
//! running, losing nothing; an invalid one is refused with its errors and the running
//! config stays.

mod support;

use std::path::Path;
use std::time::Duration;

use support::modbus::read_ndjson;
use support::*;

fn body(dir: &Path, plant_devices: usize, second: bool, uplink_b: bool) -> String {
    let mut text = format!(
        r#"
[[sources.simulated]]
name = "plant"
devices = {plant_devices}
interval = "20ms"
"#
    );
    if second {
        text.push_str(
            "\n[[sources.simulated]]\nname = \"second\"\ndevices = 1\ninterval = \"20ms\"\n",
        );
    }
    text.push_str(&format!(
        "\n[[uplinks.file]]\nname = \"a\"\npath = \"{}\"\nlinger = \"50ms\"\n",
        dir.join("a.ndjson").display()
    ));
    if uplink_b {
        text.push_str(&format!(
            "\n[[uplinks.file]]\nname = \"b\"\npath = \"{}\"\nlinger = \"50ms\"\n",
            dir.join("b.ndjson").display()
        ));
    }
    text
}

fn hup(daemon: &Daemon) {
    std::process::Command::new("kill")
        .args(["-HUP", &daemon.pid().to_string()])
        .status()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_restarts_what_changed_and_refuses_a_bad_config() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_test_config(dir.path(), &body(dir.path(), 1, true, false));
    let mut daemon = Daemon::start(&config, &dir.path().join("tidegate.log"));
    let a = dir.path().join("a.ndjson");
    wait_until("records in a", Duration::from_secs(20), || {
        read_ndjson(&a).len() >= 50
    })
    .await;

    // Valid: plant changes (restart), second goes, b comes, a stays as it is.
    write_test_config(dir.path(), &body(dir.path(), 2, false, true));
    hup(&daemon);
    daemon
        .wait_log("the reload", Duration::from_secs(20), |t| {
            t.contains("reload: started")
        })
        .await;
    let line = daemon
        .log_text()
        .lines()
        .find(|l| l.contains("reload: started"))
        .unwrap()
        .to_string();
    eprintln!("{line}");
    assert!(line.contains("started uplink b"), "{line}");
    assert!(line.contains("restarted source plant"), "{line}");
    assert!(line.contains("stopped source second"), "{line}");
    assert!(!line.contains("uplink a"), "a did not change: {line}");
    let b = dir.path().join("b.ndjson");
    wait_until("records in b and pump-2", Duration::from_secs(20), || {
        let records = read_ndjson(&b);
        records.iter().any(|r| r["device"] == "pump-2")
    })
    .await;

    // Invalid: refused, with the error; everything keeps running.
    let good = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        good.replace("linger = \"50ms\"", "linger = \"50ms\"\nlingr = 1"),
    )
    .unwrap();
    let before = read_ndjson(&a).len();
    hup(&daemon);
    daemon
        .wait_log("the refusal", Duration::from_secs(20), |t| {
            t.contains("reload refused")
        })
        .await;
    wait_until("a still growing", Duration::from_secs(20), || {
        read_ndjson(&a).len() > before + 50
    })
    .await;
    let log = daemon.log_text();
    let refusal = log
        .lines()
        .find(|l| l.contains("reload refused"))
        .unwrap()
        .to_string();
    eprintln!("{refusal}");
    assert!(log.contains("lingr"), "the error names the key");
    assert!(
        log.contains("tidegate.toml:"),
        "the error names the file and line"
    );
    assert_eq!(daemon.terminate(), Some(0));

    // Nothing lost: a, which ran through both reloads, has every record exactly once.
    let mut seqs: Vec<u64> = read_ndjson(&a)
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    let total = seqs.len();
    seqs.sort_unstable();
    seqs.dedup();
    let last = *seqs.last().unwrap();
    eprintln!(
        "uplink a: {total} records, {} distinct, seq 1..={last}",
        seqs.len()
    );
    assert_eq!(seqs.len() as u64, last, "no gap in a");
    assert_eq!(
        total,
        seqs.len(),
        "no duplicate in a: it was never restarted"
    );
    // b started at the oldest record held, and has everything after it.
    let b_seqs: Vec<u64> = read_ndjson(&b)
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    let first_b = *b_seqs.iter().min().unwrap();
    let b_set: std::collections::HashSet<u64> = b_seqs.into_iter().collect();
    assert!((first_b..=last).all(|s| b_set.contains(&s)), "no gap in b");
    let second_after: usize = read_ndjson(&a)
        .iter()
        .filter(|r| r["source"] == "second" && r["seq"].as_u64().unwrap() > first_b + 200)
        .count();
    assert_eq!(second_after, 0, "the removed source stopped");
}
