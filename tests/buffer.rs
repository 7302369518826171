//! `tidegate buffer …` against a real state directory, while the daemon runs and after it
//! stopped: reading works live, changing refuses (naming the pid) until the daemon is
//! stopped; dead letters are exported, requeued and then delivered under their original
//! sequence numbers; purge drops what it says.

mod support;

use std::process::{Command, Output};
use std::time::Duration;

use support::*;

/// Runs a command with a deadline: a command that hangs fails the test, it does not
/// hang the suite.
fn bounded(command: &mut Command) -> Output {
    let child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("{command:?} did not finish within 30 s");
        }
    }
}

fn buffer(config: &std::path::Path, args: &[&str]) -> Output {
    bounded(
        Command::new(env!("CARGO_BIN_EXE_tidegate"))
            .args(["-c"])
            .arg(config)
            .arg("buffer")
            .args(args),
    )
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn stats(config: &std::path::Path) -> serde_json::Value {
    let out = buffer(config, &["stats", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffer_commands_read_live_change_only_when_stopped() {
    let dir = tempfile::tempdir().unwrap();
    // A backend that refuses every batch for good: everything becomes a dead letter.
    let backend = Backend::start(Box::new(|_| 400)).await;
    let config = write_sim_config(dir.path(), &backend.url, "");
    let log = dir.path().join("tidegate.log");
    let mut daemon = Daemon::start(&config, &log);
    wait_until("dead letters", Duration::from_secs(20), || {
        daemon.log_text().contains("for good")
    })
    .await;

    // Live: stats and peek work and say who holds the store.
    let live = stats(&config);
    assert_eq!(live["running_pid"], daemon.pid());
    assert!(live["last_seq"].as_u64().unwrap() > 0);
    let peek = buffer(&config, &["peek", "-n", "3"]);
    assert!(peek.status.success(), "{}", text(&peek));
    for line in String::from_utf8_lossy(&peek.stdout).lines() {
        let record: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(record["lane"], "main");
        assert!(record["seq"].as_u64().unwrap() > 0);
    }
    // Live: changes are refused, naming the daemon.
    for args in [
        &["requeue-dead-letters"][..],
        &["purge", "--yes"],
        &["export", "--dead-letters"],
    ] {
        let out = buffer(&config, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", text(&out));
        let said = text(&out);
        assert!(
            said.contains(&format!("pid {}", daemon.pid())) || said.contains("stopped"),
            "{args:?}: {said}"
        );
    }
    let purge_without_yes = buffer(&config, &["purge"]);
    assert_eq!(purge_without_yes.status.code(), Some(1));
    assert!(text(&purge_without_yes).contains("--yes"));

    assert_eq!(daemon.terminate(), Some(0));
    let stopped = stats(&config);
    assert!(stopped["running_pid"].is_null());
    let dead = stopped["dead_letters"].as_u64().unwrap();
    assert!(dead > 0, "{stopped}");

    // Export the dead letters: one line each, with the reason.
    let export_path = dir.path().join("dead.ndjson");
    let out = buffer(
        &config,
        &[
            "export",
            "--dead-letters",
            "-o",
            export_path.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let exported: Vec<serde_json::Value> = std::fs::read_to_string(&export_path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(exported.len() as u64, dead);
    assert!(exported[0]["reason"].as_str().unwrap().contains("400"));
    let mut dead_seqs: Vec<u64> = exported
        .iter()
        .map(|v| v["record"]["seq"].as_u64().unwrap())
        .collect();
    dead_seqs.sort();

    // Requeue them; the next start sends them first, under their own numbers.
    let out = buffer(&config, &["requeue-dead-letters"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("requeued {dead}")),
        "{}",
        text(&out)
    );
    assert_eq!(stats(&config)["requeued"], dead);
    backend.set_script(Box::new(|_| 200));
    let before = backend.requests().len();
    let mut daemon = Daemon::start(&config, &log);
    wait_until(
        "the requeued records delivered",
        Duration::from_secs(20),
        || {
            let seqs = delivered_seqs(&backend);
            dead_seqs.iter().all(|s| seqs.contains(s))
        },
    )
    .await;
    let first_after: Vec<u64> = backend.requests()[before..]
        .iter()
        .find(|r| (200..300).contains(&r.status))
        .unwrap()
        .records()
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(
        first_after,
        dead_seqs[..first_after.len()],
        "requeued records go first"
    );
    assert_eq!(daemon.terminate(), Some(0));
    let after = stats(&config);
    assert_eq!(after["requeued"], 0);
    assert_eq!(after["dead_letters"], 0);

    // Purge: whatever is still buffered is dropped and counted.
    let buffered = after["records"].as_u64().unwrap();
    let out = buffer(&config, &["purge", "--yes"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("purged {buffered} records")),
        "{}",
        text(&out)
    );
    let purged = stats(&config);
    assert_eq!(purged["records"], 0);
    assert_eq!(purged["purged_total"], buffered);
}

#[test]
fn buffer_commands_on_a_missing_store_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let out = bounded(
        Command::new(env!("CARGO_BIN_EXE_tidegate"))
            .args(["buffer", "stats", "--state-dir"])
            .arg(dir.path().join("nothing")),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("no tidegate store here"),
        "{}",
        text(&out)
    );
}
