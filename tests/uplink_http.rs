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
    // The first two requests are answered 413 (full batches of 10, then 5).
    let backend = Backend::start(Box::new(|i| if i < 2 { 413 } else { 200 })).await;
    let mut daemon = start(dir.path(), &backend.url, "");
    wait_until(
        "delivery in smaller batches",
        Duration::from_secs(30),
        || backend.delivered().len() >= 20,
    )
    .await;
    assert_eq!(daemon.terminate(), Some(0));
    let requests = backend.requests();
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
