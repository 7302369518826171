//! systemd integration with the real daemon and a real notification socket: READY and
//! STATUS, and the watchdog — pinged while every stage makes progress, not pinged while
//! one is stuck (here an uplink writing to a FIFO nobody reads, as a file on a hung mount
//! would), pinged again once it moves. A stop sent the moment READY is seen, handled. And
//! the start-up code pages given back once ready.

mod support;

use std::time::{Duration, Instant};

use support::*;
use tokio::net::UnixDatagram;

/// The daemon, killed if the test fails before it stops it.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Collects what the daemon tells systemd, with the time it arrived.
async fn collect(socket: &UnixDatagram, for_how_long: Duration, into: &mut Vec<(Instant, String)>) {
    let until = Instant::now() + for_how_long;
    let mut buf = vec![0u8; 4096];
    while Instant::now() < until {
        let left = until - Instant::now();
        if let Ok(Ok(n)) = tokio::time::timeout(left, socket.recv(&mut buf)).await {
            for line in String::from_utf8_lossy(&buf[..n]).lines() {
                into.push((Instant::now(), line.to_string()));
            }
        }
    }
}

/// Two simulated pumps every 50 ms, delivered to a file uplink at `path`.
fn plant_to_file(dir: &std::path::Path, path: &std::path::Path) -> std::path::PathBuf {
    write_test_config(
        dir,
        &format!(
            r#"
[[sources.simulated]]
name = "plant"
devices = 2
interval = "50ms"

[[uplinks.file]]
name = "archive"
path = "{}"
linger = "100ms"
"#,
            path.display()
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchdog_is_pinged_only_while_every_stage_makes_progress() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let fifo = dir.path().join("archive.fifo");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let config = plant_to_file(dir.path(), &fifo);
    let log_path = dir.path().join("tidegate.log");
    let log_file = std::fs::File::create(&log_path).unwrap();
    // systemd sets WATCHDOG_PID to the service's pid; `exec` keeps the shell's.
    let mut child = Killed(
        std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "WATCHDOG_PID=$$ exec {} run -c {}",
                env!("CARGO_BIN_EXE_tidegate"),
                config.display()
            ))
            .env("NOTIFY_SOCKET", &socket_path)
            .env("WATCHDOG_USEC", "1000000")
            .env("TIDEGATE_LOG", "info")
            .stderr(log_file)
            .spawn()
            .unwrap(),
    );
    let read_log = || std::fs::read_to_string(&log_path).unwrap_or_default();

    // The uplink opens the FIFO for its first batch and blocks: no reader. Its allowance
    // is its deadline (10 s for a local file) plus the watchdog interval.
    let mut said = Vec::new();
    collect(&socket, Duration::from_secs(13), &mut said).await;
    let ready = said
        .iter()
        .position(|(_, l)| l == "READY=1")
        .expect("READY=1 sent");
    let status = said
        .iter()
        .find(|(_, l)| l.starts_with("STATUS="))
        .map(|(_, l)| l.clone());
    let pings_before: Vec<Instant> = said[ready..]
        .iter()
        .filter(|(_, l)| l == "WATCHDOG=1")
        .map(|(t, _)| *t)
        .collect();
    let log = read_log();
    assert!(
        log.contains("uplink archive has been stuck"),
        "the stuck stage is named: {log}"
    );
    // Stuck: no pings for as long as it stays stuck.
    let mut while_stuck = Vec::new();
    collect(&socket, Duration::from_secs(3), &mut while_stuck).await;
    let pings_while_stuck = while_stuck
        .iter()
        .filter(|(_, l)| l == "WATCHDOG=1")
        .count();
    let stuck_status = while_stuck
        .iter()
        .any(|(_, l)| l == "STATUS=stuck: uplink archive");

    // A reader appears: the uplink moves, the pings come back.
    let reader = std::thread::spawn({
        let fifo = fifo.clone();
        move || {
            let mut f = std::fs::File::open(&fifo).unwrap();
            let mut sink = Vec::new();
            let _ = std::io::Read::read_to_end(&mut f, &mut sink);
            sink.len()
        }
    });
    let mut after = Vec::new();
    collect(&socket, Duration::from_secs(3), &mut after).await;
    let pings_after = after.iter().filter(|(_, l)| l == "WATCHDOG=1").count();
    std::process::Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    let code = child.0.wait().unwrap().code();
    let received = reader.join().unwrap();
    eprintln!(
        "READY, then {} pings before the uplink got stuck, {pings_while_stuck} in 3 s while stuck \
         (status \"stuck: uplink archive\": {stuck_status}), {pings_after} in 3 s once it moved; \
         first status {status:?}; {received} bytes reached the FIFO; exit {code:?}",
        pings_before.len(),
    );
    assert!(status.is_some_and(|s| s.contains("committed")));
    assert_eq!(pings_while_stuck, 0, "no ping while a stage is stuck");
    assert!(stuck_status);
    assert!(pings_after >= 2, "pinged again once it moves");
    assert!(read_log().contains("every stage makes progress again"));
    assert!(received > 0);
    assert_eq!(code, Some(0));
}

/// Once ready, the daemon unmaps the pages of its binary that start-up used (they are
/// clean copies of the file): its resident code falls, and the code it goes on running
/// faults back in and works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_ready_the_start_up_code_is_given_back_and_the_daemon_runs_on() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive.ndjson");
    let config = plant_to_file(dir.path(), &archive);
    let mut daemon = Daemon::start(&config, &dir.path().join("tidegate.log"));
    let given_back_kib = |text: &str| {
        text.lines()
            .find_map(|l| l.split("gave back ").nth(1))
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse::<u64>().ok())
    };
    daemon
        .wait_log(
            "the start-up pages given back",
            Duration::from_secs(20),
            |t| given_back_kib(t).is_some(),
        )
        .await;
    let given_back = given_back_kib(&daemon.log_text()).unwrap();
    assert!(given_back > 0, "{}", daemon.log_text());
    let lines = || {
        std::fs::read_to_string(&archive)
            .unwrap_or_default()
            .lines()
            .count()
    };
    let before = lines();
    wait_until(
        "records delivered after the release",
        Duration::from_secs(20),
        || lines() >= before + 40,
    )
    .await;
    let resident_kib = binary_resident_kib(daemon.pid());
    eprintln!(
        "{given_back} KiB given back; {resident_kib} KiB of the binary's file pages resident after"
    );
    // Kept, the pages would all still be there (and more); here about 55% came back, the
    // code that keeps running with the 64 KiB around each of its faults.
    assert!(
        resident_kib < given_back * 3 / 4,
        "{resident_kib} KiB of the binary's file pages resident while running, {given_back} KiB were given back"
    );
    assert_eq!(daemon.terminate(), Some(0));
}

/// systemd may send the stop as soon as it reads READY=1 (`systemctl restart` right
/// after a start, a failed `ExecStartPost`). The daemon must already be listening for it
/// then: drain and exit 0, not die of the signal's default action mid-commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_sent_the_moment_ready_is_reported_stops_the_daemon_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let config = plant_to_file(dir.path(), &dir.path().join("archive.ndjson"));
    for attempt in 0..3 {
        let socket_path = dir.path().join(format!("notify-{attempt}.sock"));
        let socket = UnixDatagram::bind(&socket_path).unwrap();
        let log_path = dir.path().join(format!("tidegate-{attempt}.log"));
        let mut child = Killed(
            std::process::Command::new(daemon_binary())
                .args(["run", "-c"])
                .arg(&config)
                .env("NOTIFY_SOCKET", &socket_path)
                .env("TIDEGATE_LOG", "info")
                .stderr(std::fs::File::create(&log_path).unwrap())
                .spawn()
                .unwrap(),
        );
        let mut buf = vec![0u8; 4096];
        loop {
            let n = tokio::time::timeout(Duration::from_secs(20), socket.recv(&mut buf))
                .await
                .expect("READY=1 within 20 s")
                .unwrap();
            if String::from_utf8_lossy(&buf[..n])
                .lines()
                .any(|l| l == "READY=1")
            {
                break;
            }
        }
        let pid = child.0.id();
        assert!(
            std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .unwrap()
                .success()
        );
        let status = wait_exit(&mut child.0, Duration::from_secs(20)).await;
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        assert_eq!(
            status.code(),
            Some(0),
            "attempt {attempt}: {status:?} (a signal, were the stop not handled yet)\n{log}"
        );
        assert!(log.contains("SIGTERM received"), "{log}");
    }
}

async fn wait_exit(child: &mut std::process::Child, within: Duration) -> std::process::ExitStatus {
    let until = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < until,
            "the daemon did not exit within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Resident KiB of the daemon binary's file pages (not the libraries', not the pages it
/// wrote), from smaps.
fn binary_resident_kib(pid: u32) -> u64 {
    let binary = std::fs::canonicalize(daemon_binary()).unwrap();
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    tidegate::ops::memory::mappings(&smaps)
        .filter(|m| m.path == binary.to_str())
        .map(|m| m.resident_kib.saturating_sub(m.anonymous_kib))
        .sum()
}
