//! Crash safety with real parts: the daemon is killed with SIGKILL at random instants while
//! a QoS 1 stream flows and the backend is down, then restarted, many times. Every message
//! the broker accepted must reach the backend once the backend is back. Also: a store
//! damaged on disk never stops the daemon from starting.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_instants_loses_nothing_the_broker_accepted() {
    let iterations: usize = std::env::var("TG_CRASH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let mqtt = Mosquitto::start();
    // Down for the whole crash phase: records pile up in the store and must survive.
    let backend = Backend::start(Box::new(|_| 503)).await;
    let config = write_config(dir.path(), mqtt.port, &backend.url, "");
    let log = dir.path().join("tidegate.log");
    let mut daemon = Daemon::start(&config, &log);
    wait_until("the first subscription", Duration::from_secs(20), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("subscribed to")
    })
    .await;

    // A steady QoS 1 stream from a separate task, numbered.
    let publisher = Publisher::connect(mqtt.port, "stream").await;
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let stream = tokio::spawn(async move {
        let mut n = 0usize;
        loop {
            if stop_rx.try_recv().is_ok() || n >= 200_000 {
                break;
            }
            publisher
                .publish("plant/l1/pump-1/telemetry", format!("{{\"n\": {n}}}"))
                .await;
            n += 1;
            if n.is_multiple_of(20) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        (publisher, n)
    });

    let mut rng = fastrand::Rng::with_seed(42);
    let mut restart_times = Vec::new();
    for i in 0..iterations {
        tokio::time::sleep(Duration::from_millis(rng.u64(100..700))).await;
        daemon.kill();
        let started = Instant::now();
        daemon = Daemon::start(&config, &log);
        wait_until("ready after a SIGKILL", Duration::from_secs(20), || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .matches("INFO  ready")
                .count()
                > i + 1
        })
        .await;
        restart_times.push(started.elapsed());
    }
    stop_tx.send(()).unwrap();
    let (publisher, published) = stream.await.unwrap();
    publisher.wait_acked(published).await;

    backend.set_script(Box::new(|_| 200));
    wait_until(
        "every accepted message at the backend",
        Duration::from_secs(120),
        || backend.delivered_count() >= published,
    )
    .await;
    assert_eq!(daemon.terminate(), Some(0));

    let delivered = backend.delivered();
    let mut seen: HashMap<i64, usize> = HashMap::new();
    for r in &delivered {
        *seen.entry(r["fields"]["n"].as_i64().unwrap()).or_default() += 1;
    }
    let lost = (0..published as i64)
        .filter(|n| !seen.contains_key(n))
        .count();
    let duplicates = delivered.len() - seen.len();
    restart_times.sort();
    eprintln!(
        "{iterations} SIGKILLs; {published} messages accepted by the broker; lost {lost}; \
         {duplicates} duplicates ({:.1} per crash); restart to ready: median {:?}, max {:?}",
        duplicates as f64 / iterations as f64,
        restart_times[restart_times.len() / 2],
        restart_times.last().unwrap()
    );
    assert_eq!(lost, 0);
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else if entry.file_name() != "lock" {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn buffered(log: &str) -> Option<u64> {
    let start = log.find("records buffered")?;
    let before = &log[..start];
    before.rsplit('(').next()?.trim().parse().ok()
}

fn distinct_seqs(backend: &Backend) -> u64 {
    delivered_seqs(backend)
        .into_iter()
        .collect::<std::collections::HashSet<_>>()
        .len() as u64
}

/// Segment files of the main lane, oldest first.
fn segments(state: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(state.join("log/main"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    files
}

fn truncate(path: &std::path::Path, keep: impl Fn(u64) -> u64) {
    let len = std::fs::metadata(path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(keep(len))
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_store_never_stops_the_daemon_and_every_intact_record_is_delivered() {
    let dir = tempfile::tempdir().unwrap();
    // Fill a store: a simulated plant, and a backend that is never reachable. Small
    // segments, so that damage can hit the middle, the oldest and the newest file.
    let config = write_sim_config(
        dir.path(),
        "http://127.0.0.1:9/ingest",
        "\n[store]\nsegment_size = \"64KiB\"\n",
    );
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("devices = 1", "devices = 20");
    std::fs::write(&config, text).unwrap();
    let mut filler = Daemon::start(&config, &dir.path().join("fill.log"));
    wait_until("records in the store", Duration::from_secs(20), || {
        filler.log_text().matches("summary:").count() >= 3
    })
    .await;
    assert_eq!(filler.terminate(), Some(0));
    let fill_log = filler.log_text();
    let final_line = fill_log.lines().find(|l| l.contains("final:")).unwrap();
    let stored: u64 = final_line
        .split("buffer ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    let pristine = dir.path().join("pristine");
    copy_dir(&dir.path().join("state"), &pristine);
    assert!(segments(&pristine).len() >= 4, "several segment files");

    type Damage = Box<dyn Fn(&std::path::Path)>;
    let scenarios: Vec<(&str, Damage)> = vec![
        ("none", Box::new(|_: &std::path::Path| {})),
        (
            "flip 20 random bytes in the log",
            Box::new(|state: &std::path::Path| {
                let files = segments(state);
                let mut rng = fastrand::Rng::with_seed(7);
                for _ in 0..20 {
                    let path = &files[rng.usize(0..files.len())];
                    let mut bytes = std::fs::read(path).unwrap();
                    let i = rng.usize(16..bytes.len());
                    bytes[i] ^= 0x5a;
                    std::fs::write(path, bytes).unwrap();
                }
            }),
        ),
        (
            "zero a whole segment",
            Box::new(|state: &std::path::Path| {
                let path = &segments(state)[1];
                let len = std::fs::metadata(path).unwrap().len() as usize;
                std::fs::write(path, vec![0u8; len]).unwrap();
            }),
        ),
        (
            "truncate the newest segment to half",
            Box::new(|state: &std::path::Path| {
                truncate(segments(state).last().unwrap(), |len| len / 2)
            }),
        ),
        (
            "truncate a middle segment to half",
            Box::new(|state: &std::path::Path| truncate(&segments(state)[2], |len| len / 2)),
        ),
        (
            "delete a middle segment",
            Box::new(|state: &std::path::Path| std::fs::remove_file(&segments(state)[1]).unwrap()),
        ),
        (
            "delete the oldest segment",
            Box::new(|state: &std::path::Path| std::fs::remove_file(&segments(state)[0]).unwrap()),
        ),
        (
            "delete the newest segment",
            Box::new(|state: &std::path::Path| {
                std::fs::remove_file(segments(state).last().unwrap()).unwrap()
            }),
        ),
        (
            "delete the cursor state files",
            Box::new(|state: &std::path::Path| {
                for f in ["state.v", "state.0", "state.1"] {
                    let _ = std::fs::remove_file(state.join(f));
                }
            }),
        ),
        (
            "garbage in the cursor state files",
            Box::new(|state: &std::path::Path| {
                for f in ["state.v", "state.0", "state.1"] {
                    std::fs::write(state.join(f), "garbage\n").unwrap();
                }
            }),
        ),
        (
            "garbage in the dead-letter store",
            Box::new(|state: &std::path::Path| {
                std::fs::write(state.join("deadletters/db"), vec![0x5au8; 4096]).unwrap();
            }),
        ),
    ];
    eprintln!("store of {stored} records, damaged offline, then started and drained:");
    for (name, damage) in scenarios {
        let state = dir.path().join("state");
        std::fs::remove_dir_all(&state).unwrap();
        copy_dir(&pristine, &state);
        damage(&state);
        // Started with a backend that takes everything, and a source with no broker
        // behind it: what arrives is exactly what was recovered.
        let backend = Backend::start(Box::new(|_| 200)).await;
        let run_config = dir.path().join("run.toml");
        std::fs::write(
            &run_config,
            format!(
                "[gateway]\nid = \"gw-test\"\nstate_dir = \"{}\"\n\n[log]\nsummary_interval = \"1s\"\n\n\
                 [[sources.mqtt]]\nname = \"idle\"\nport = {}\n\
                 [[sources.mqtt.subscriptions]]\nfilter = \"none/#\"\n\n\
                 [[uplinks.http]]\nname = \"cloud\"\nurl = \"{}\"\nmax_records = 500\nlinger = \"50ms\"\n",
                state.display(),
                free_port(),
                backend.url
            ),
        )
        .unwrap();
        let log = dir.path().join(format!("{}.log", name.replace(' ', "-")));
        let mut daemon = Daemon::start(&run_config, &log);
        wait_until(
            &format!("ready after: {name}"),
            Duration::from_secs(20),
            || {
                std::fs::read_to_string(&log)
                    .unwrap_or_default()
                    .contains("INFO  ready")
            },
        )
        .await;
        assert!(daemon.is_running(), "{name}: it must keep running");
        let text = std::fs::read_to_string(&log).unwrap();
        let recovered = buffered(&text).unwrap_or(0);
        if std::env::var("TG_DEBUG_DAMAGE").is_ok() {
            eprintln!("{text}");
        }
        wait_until(
            &format!("{name}: every recovered record delivered"),
            Duration::from_secs(30),
            || distinct_seqs(&backend) >= recovered,
        )
        .await;
        assert_eq!(daemon.terminate(), Some(0), "{name}");
        let delivered = distinct_seqs(&backend);
        let reported_lost: u64 = text
            .lines()
            .filter(|l| l.contains("are damaged or missing on disk"))
            .filter_map(|l| {
                l.split("store: ")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum();
        let quarantined = std::fs::read_dir(state.join("quarantine"))
            .map(|d| d.count())
            .unwrap_or(0);
        eprintln!(
            "  {name:<36} starts: yes; recovered and delivered {delivered} of {stored}; \
             reported lost {reported_lost}; damaged regions quarantined {quarantined}"
        );
        assert_eq!(
            delivered, recovered,
            "{name}: every recovered record is delivered"
        );
        assert_eq!(
            recovered + reported_lost,
            stored,
            "{name}: every record is either delivered or counted lost"
        );
        match name {
            "none"
            | "delete the cursor state files"
            | "garbage in the cursor state files"
            | "garbage in the dead-letter store" => {
                assert_eq!(recovered, stored, "{name}: nothing lost")
            }
            "flip 20 random bytes in the log" => {
                assert!(
                    reported_lost <= 20,
                    "{name}: one record per flipped byte at most"
                );
                assert!(quarantined > 0, "{name}: the damaged bytes are kept");
            }
            _ => assert!(reported_lost > 0, "{name}: the loss is reported"),
        }
    }
}
