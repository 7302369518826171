//! The HTTP uplink against a real HTTP(S) server with scripted answers: how each status
//! is handled, Retry-After, oversized batches, HTTPS with a private CA, bearer tokens and
//! client certificates. The source is the simulated plant, so no broker is needed.

mod support;

use std::time::{Duration, Instant};

use support::*;

fn start(dir: &std::path::Path, url: &str, extra: &str) -> Daemon {
    let config = write_sim_config(dir, url, extra);
    Daemon::start(&config, &dir.join("tidegate.log"))
}

/// Delivered sequence numbers must run 1, 2, 3... with nothing missing.
fn assert_contiguous_from_one(seqs: &[u64]) {
    let mut sorted = seqs.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(
        sorted.first(),
        Some(&1),
        "delivery starts at the first record"
    );
    for pair in sorted.windows(2) {
        assert_eq!(pair[1], pair[0] + 1, "gap after {}", pair[0]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_rejection_is_dead_lettered_and_the_queue_moves_on() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start(Box::new(|i| if i == 0 { 400 } else { 200 })).await;
    let mut daemon = start(dir.path(), &backend.url, "");
    wait_until(
        "deliveries after the rejection",
        Duration::from_secs(30),
        || backend.delivered().len() >= 30,
    )
    .await;
    assert_eq!(daemon.terminate(), Some(0));
    let requests = backend.requests();
    let rejected = &requests[0];
    assert_eq!(rejected.status, 400);
    let rejected_last = rejected.body["last_seq"].as_u64().unwrap();
    let seqs = delivered_seqs(&backend);
    assert_eq!(
        seqs[0],
        rejected_last + 1,
        "the queue moved on past the rejected batch"
    );
    let log = daemon.log_text();
    assert!(log.contains("rejected records 1..="), "{log}");
    assert!(log.contains("kept in the dead-letter store"), "{log}");
    let final_line = log.lines().find(|l| l.contains("final:")).unwrap();
    assert!(
        final_line.contains(&format!("dead-lettered {}", rejected.records().len())),
        "{final_line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auth_failure_alarms_and_keeps_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start(Box::new(|i| if i < 4 { 401 } else { 200 })).await;
    let mut daemon = start(dir.path(), &backend.url, "");
    wait_until(
        "delivery once the backend accepts",
        Duration::from_secs(30),
        || backend.delivered().len() >= 20,
    )
    .await;
    assert_eq!(daemon.terminate(), Some(0));
    let log = daemon.log_text();
    assert!(
        log.contains("ERROR uplink cloud: delivery refused (HTTP 401"),
        "{log}"
    );
    assert_contiguous_from_one(&delivered_seqs(&backend));
    assert!(!log.contains("dead-letter"), "nothing set aside: {log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_too_large_for_the_backend_are_split_not_dropped() {
    let dir = tempfile::tempdir().unwrap();
    // The first two requests of more than one record are answered 413 (a batch, then its
    // first half). A request of one record is answered 200: the uplink's first read at
    // start can find only the first record, and a single record too large is set aside.
    let multi_record_requests = std::sync::atomic::AtomicUsize::new(0);
    let backend = Backend::start_sized(Box::new(move |_, records| {
        use std::sync::atomic::Ordering::Relaxed;
        // `&&` stops before counting a one-record request.
        if records > 1 && multi_record_requests.fetch_add(1, Relaxed) < 2 {
            413
        } else {
            200
        }
    }))
    .await;
    let mut daemon = start(dir.path(), &backend.url, "");
    wait_until(
        "delivery in smaller batches",
        Duration::from_secs(30),
        || backend.delivered().len() >= 20,
    )
    .await;
    assert_eq!(daemon.terminate(), Some(0));
    // From the first 413 on: what came before it was a one-record request, delivered.
    let requests: Vec<_> = backend
        .requests()
        .into_iter()
        .skip_while(|r| r.status != 413)
        .collect();
    let sizes: Vec<usize> = requests.iter().take(3).map(|r| r.records().len()).collect();
    eprintln!("batch sizes: {sizes:?}");
    assert!(sizes[0] >= 2, "{sizes:?}");
    assert_eq!(
        sizes[1],
        sizes[0] / 2,
        "halved after the first 413: {sizes:?}"
    );
    assert_eq!(
        sizes[2],
        (sizes[1] / 2).max(1),
        "halved again after the second 413: {sizes:?}"
    );
    assert_eq!(
        requests[0].body["first_seq"], requests[2].body["first_seq"],
        "same records, resent"
    );
    assert_contiguous_from_one(&delivered_seqs(&backend));
    assert!(
        daemon
            .log_text()
            .contains(&format!("sending at most {} per batch", sizes[1]))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start(Box::new(|i| if i == 0 { 429 } else { 200 })).await;
    backend.set_retry_after(Some("2"));
    let started = Instant::now();
    let mut daemon = start(dir.path(), &backend.url, "");
    wait_until("the first request", Duration::from_secs(20), || {
        !backend.requests().is_empty()
    })
    .await;
    let first_at = started.elapsed();
    wait_until("the retry", Duration::from_secs(20), || {
        backend.requests().len() >= 2
    })
    .await;
    let gap = started.elapsed() - first_at;
    assert_eq!(daemon.terminate(), Some(0));
    eprintln!(
        "retry came {gap:?} after a 429 with Retry-After: 2 (back-off alone would be <= 300ms)"
    );
    // A lower bound only: a busy machine can make the gap longer, never shorter.
    assert!(gap >= Duration::from_millis(1800), "retried after {gap:?}");
    let requests = backend.requests();
    assert_eq!(
        requests[0].idempotency_key, requests[1].idempotency_key,
        "the same batch again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_private_ca_a_bearer_token_and_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let backend = Backend::start_tls(Box::new(|_| 200), pki.server_config(true)).await;
    std::fs::write(dir.path().join("token"), "tok-s3cret\n").unwrap();
    let extra = format!(
        "token = {{ file = \"{}\" }}\ntls = {{ ca_file = \"{}\", client_cert_file = \"{}\", client_key_file = \"{}\" }}\n",
        dir.path().join("token").display(),
        pki.ca_pem.display(),
        pki.client_cert.display(),
        pki.client_key.display()
    );
    let mut daemon = start(dir.path(), &backend.url, &extra);
    wait_until("delivery over mutual TLS", Duration::from_secs(30), || {
        backend.delivered().len() >= 10
    })
    .await;
    assert_eq!(daemon.terminate(), Some(0));
    let request = &backend.requests()[0];
    assert_eq!(request.authorization.as_deref(), Some("Bearer tok-s3cret"));
    assert!(
        !daemon.log_text().contains("tok-s3cret"),
        "the token never reaches the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_server_certificate_is_refused_and_the_data_kept() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let backend = Backend::start_tls(Box::new(|_| 200), pki.server_config(false)).await;
    // No ca_file: the system roots do not know the test CA.
    let mut daemon = start(dir.path(), &backend.url, "");
    wait_until(
        "the certificate failure to be logged",
        Duration::from_secs(30),
        || daemon.log_text().contains("delivery refused"),
    )
    .await;
    wait_until("records to accumulate", Duration::from_secs(30), || {
        daemon.log_text().contains("lag ")
    })
    .await;
    assert_eq!(daemon.terminate(), Some(0));
    let log = daemon.log_text();
    assert!(
        backend.requests().is_empty(),
        "no request passes an untrusted handshake"
    );
    let why = log
        .lines()
        .find(|l| l.contains("delivery refused"))
        .unwrap();
    eprintln!("logged: {why}");
    assert!(
        why.contains("invalid peer certificate: UnknownIssuer"),
        "the log says why: {why}"
    );
    let final_line = log.lines().find(|l| l.contains("final:")).unwrap();
    assert!(final_line.contains("delivered 0"), "{final_line}");
    assert!(
        !final_line.contains("buffer 0 records"),
        "data kept: {final_line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_wrong_host_certificates_are_refused_with_the_reason() {
    for (what, expected) in [
        (BadServerCert::Expired, "certificate expired"),
        (BadServerCert::WrongHost, "not valid for name"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new();
        let backend = Backend::start_tls(Box::new(|_| 200), pki.bad_server_config(what)).await;
        let extra = format!("tls = {{ ca_file = \"{}\" }}\n", pki.ca_pem.display());
        let mut daemon = start(dir.path(), &backend.url, &extra);
        daemon
            .wait_log("the certificate refused", Duration::from_secs(30), |text| {
                text.contains("delivery refused") && text.contains("lag ")
            })
            .await;
        assert_eq!(daemon.terminate(), Some(0));
        let log = daemon.log_text();
        let why = log
            .lines()
            .find(|l| l.contains("delivery refused"))
            .unwrap();
        eprintln!("{what:?}: {why}");
        assert!(why.contains(expected), "{what:?}: the log says why: {why}");
        assert!(
            why.contains("ERROR"),
            "a certificate problem needs a person"
        );
        assert!(backend.requests().is_empty(), "{what:?}: no request passes");
        let final_line = log.lines().find(|l| l.contains("final:")).unwrap();
        assert!(
            !final_line.contains("buffer 0 records"),
            "data kept: {final_line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_after_commit_resends_the_same_batch_under_the_same_key() {
    let dir = tempfile::tempdir().unwrap();
    // Every third request is committed by the backend, then the connection drops.
    let backend = Backend::start(Box::new(
        |n| if n % 3 == 1 { RESET_AFTER_COMMIT } else { 200 },
    ))
    .await;
    let mut daemon = start(dir.path(), &backend.url, "");
    wait_until("several resets", Duration::from_secs(30), || {
        backend
            .requests()
            .iter()
            .filter(|r| r.status == RESET_AFTER_COMMIT)
            .count()
            >= 3
    })
    .await;
    assert_eq!(daemon.terminate(), Some(0));
    let requests = backend.requests();
    let mut resets = 0;
    for (i, r) in requests.iter().enumerate() {
        if r.status != RESET_AFTER_COMMIT {
            continue;
        }
        let Some(next) = requests.get(i + 1) else {
            continue;
        };
        resets += 1;
        assert_eq!(
            next.idempotency_key, r.idempotency_key,
            "the batch after a reset is the same batch, same key"
        );
        assert_eq!(next.records(), r.records());
    }
    let all: Vec<u64> = delivered_seqs(&backend);
    let distinct: std::collections::HashSet<u64> = all.iter().copied().collect();
    eprintln!(
        "{resets} resets after commit; {} records received, {} distinct: every duplicate carries the key of its first copy",
        all.len(),
        distinct.len()
    );
    assert!(resets >= 3);
    assert!(all.len() > distinct.len(), "duplicates did arrive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_backend_loses_nothing_and_backs_off_with_a_cap() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start(Box::new(|_| 200)).await;
    let mut daemon = start(dir.path(), &backend.url, "");
    // Down and up every 700 ms, five times.
    for _ in 0..5 {
        backend.set_script(Box::new(|_| 503));
        tokio::time::sleep(Duration::from_millis(700)).await;
        backend.set_script(Box::new(|_| 200));
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let last = {
        let text = daemon.log_text();
        let line = text
            .lines()
            .rev()
            .find(|l| l.contains("summary:"))
            .unwrap()
            .to_string();
        line.split("committed ")
            .nth(1)
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    wait_until(
        "everything committed so far delivered",
        Duration::from_secs(30),
        || delivered_seqs(&backend).contains(&last),
    )
    .await;
    assert_eq!(daemon.terminate(), Some(0));
    let mut seqs = delivered_seqs(&backend);
    seqs.sort();
    seqs.dedup();
    let lost = (1..=last)
        .filter(|s| seqs.binary_search(s).is_err())
        .count();
    // The gaps between failed attempts of one batch: jittered, capped at backoff_max.
    let requests = backend.requests();
    let failed = requests.iter().filter(|r| r.status == 503).count();
    let gaps: Vec<Duration> = requests
        .windows(2)
        .filter(|w| w[0].status == 503 && w[1].status == 503)
        .map(|w| w[1].at - w[0].at)
        .collect();
    let (min, max) = (gaps.iter().min().unwrap(), gaps.iter().max().unwrap());
    eprintln!(
        "flapping backend (down/up every 700 ms, 5 times): {} requests, {failed} refused; \
         retry gap while down min {min:?} max {max:?} (back-off 50ms..300ms, jittered); \
         {last} committed, lost {lost}",
        requests.len()
    );
    assert_eq!(lost, 0);
    assert!(failed > 0);
}
