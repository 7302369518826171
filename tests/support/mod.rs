//! Real parts for the integration tests, all on 127.0.0.1: a mosquitto broker, an HTTP
//! backend with scripted answers, an MQTT publisher, and the tidegate binary as a child
//! process. Every wait is bounded.

#![allow(dead_code)]

pub mod modbus;
pub mod mqtt_wire;

use std::io::Read;
use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `check` every 50 ms until it returns true or `timeout` passes.
pub async fn wait_until(what: &str, timeout: Duration, check: impl FnMut() -> bool) {
    wait_until_every(Duration::from_millis(50), what, timeout, check).await
}

/// [`wait_until`] at a pace of the caller's: a test that waits once per message cannot
/// afford 50 ms a wait.
pub async fn wait_until_every(
    pace: Duration,
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> bool,
) {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(pace).await;
    }
}

// ---------------------------------------------------------------------------------------
// mosquitto

pub struct Mosquitto {
    child: Child,
    /// Plain listener, anonymous access.
    pub port: u16,
    /// TLS listener with a password file, when started by `start_secure`.
    pub secure_port: Option<u16>,
    conf: PathBuf,
    _dir: tempfile::TempDir,
}

/// Settings every test broker shares. `max_queued_messages 0`: no limit, so nothing queued
/// for a stopped gateway's persistent session is dropped by the broker during a test.
const BROKER_COMMON: &str = "persistence false\nmax_queued_messages 0\nmax_inflight_messages 20\n\
                             user root\nlog_dest stderr\nlog_type error\n";

impl Mosquitto {
    pub fn start() -> Mosquitto {
        Mosquitto::start_with_inflight(20)
    }

    /// A broker that lets `inflight` QoS 1 messages to one client go unacknowledged at
    /// once (mosquitto's default is 20). A gateway that acknowledges only after an fsync
    /// needs a wide window for high rates: 20 messages per commit is its ceiling otherwise.
    pub fn start_with_inflight(inflight: u16) -> Mosquitto {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let common = BROKER_COMMON.replace(
            "max_inflight_messages 20",
            &format!("max_inflight_messages {inflight}"),
        );
        let text = format!("{common}listener {port} 127.0.0.1\nallow_anonymous true\n");
        Mosquitto::launch(dir, port, None, text)
    }

    /// A broker with a plain anonymous listener (for test publishers) and a TLS listener
    /// that requires `user`/`password`.
    pub fn start_secure(pki: &Pki, user: &str, password: &str) -> Mosquitto {
        let dir = tempfile::tempdir().unwrap();
        let passwd = dir.path().join("passwd");
        let status = Command::new("mosquitto_passwd")
            .args(["-c", "-b"])
            .arg(&passwd)
            .args([user, password])
            .status()
            .expect("mosquitto_passwd comes with mosquitto");
        assert!(status.success());
        let (port, secure_port) = (free_port(), free_port());
        let pki_dir = pki.dir.path();
        let text = format!(
            "{BROKER_COMMON}per_listener_settings true\n\
             listener {port} 127.0.0.1\nallow_anonymous true\n\
             listener {secure_port} 127.0.0.1\nallow_anonymous false\npassword_file {}\n\
             cafile {}\ncertfile {}\nkeyfile {}\n",
            passwd.display(),
            pki.ca_pem.display(),
            pki_dir.join("server.pem").display(),
            pki_dir.join("server.key").display(),
        );
        Mosquitto::launch(dir, port, Some(secure_port), text)
    }

    fn launch(
        dir: tempfile::TempDir,
        port: u16,
        secure_port: Option<u16>,
        text: String,
    ) -> Mosquitto {
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(&conf, text).unwrap();
        let child = spawn_broker(&conf, port);
        Mosquitto {
            child,
            port,
            secure_port,
            conf,
            _dir: dir,
        }
    }

    /// A "cloud" broker: a plain listener for test subscribers and a TLS listener that
    /// requires a client certificate signed by the test CA. Sessions persist across a
    /// graceful restart, so a subscriber misses nothing while the broker is down.
    pub fn start_mtls(pki: &Pki) -> Mosquitto {
        let dir = tempfile::tempdir().unwrap();
        let (port, secure_port) = (free_port(), free_port());
        let pki_dir = pki.dir.path();
        let text = format!(
            "persistence true\npersistence_location {}/\nautosave_interval 0\n\
             max_queued_messages 0\nmax_inflight_messages 100\nuser root\nlog_dest stderr\nlog_type error\n\
             per_listener_settings true\n\
             listener {port} 127.0.0.1\nallow_anonymous true\n\
             listener {secure_port} 127.0.0.1\nallow_anonymous true\nrequire_certificate true\n\
             cafile {}\ncertfile {}\nkeyfile {}\n",
            dir.path().display(),
            pki.ca_pem.display(),
            pki_dir.join("server.pem").display(),
            pki_dir.join("server.key").display(),
        );
        Mosquitto::launch(dir, port, Some(secure_port), text)
    }

    /// SIGTERM (mosquitto saves its persistent sessions), then starts it again on the
    /// same ports after `down_for`.
    pub fn restart_gracefully(&mut self, down_for: Duration) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        std::thread::sleep(down_for);
        self.child = spawn_broker(&self.conf, self.port);
    }

    /// Stops the broker (sessions are not persisted, so they are lost) and starts it
    /// again on the same ports after `down_for`.
    pub fn restart(&mut self, down_for: Duration) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(down_for);
        self.child = spawn_broker(&self.conf, self.port);
    }
}

fn spawn_broker(conf: &Path, port: u16) -> Child {
    let child = Command::new(mosquitto_binary())
        .arg("-c")
        .arg(conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto must be installed (apt-get install mosquitto); .ci/run installs it");
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "mosquitto did not start on port {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn mosquitto_binary() -> PathBuf {
    for candidate in [
        "/usr/sbin/mosquitto",
        "/usr/bin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ] {
        if Path::new(candidate).exists() {
            return PathBuf::from(candidate);
        }
    }
    PathBuf::from("mosquitto")
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real MQTT client publishing at QoS 1 and waiting for the broker's PUBACKs.
pub struct Publisher {
    client: rumqttc::AsyncClient,
    acked: Arc<Mutex<usize>>,
    task: tokio::task::JoinHandle<()>,
}

impl Publisher {
    pub async fn connect(port: u16, id: &str) -> Publisher {
        let mut options = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(10));
        options.set_max_packet_size(1 << 21, 1 << 21);
        let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 1000);
        let acked = Arc::new(Mutex::new(0));
        let counter = acked.clone();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => {
                        *counter.lock().unwrap() += 1
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        Publisher {
            client,
            acked,
            task,
        }
    }

    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload.into())
            .await
            .unwrap();
    }

    /// Waits until the broker has acknowledged `n` publishes in all.
    pub async fn wait_acked(&self, n: usize) {
        let acked = self.acked.clone();
        wait_until("broker PUBACKs", Duration::from_secs(30), || {
            *acked.lock().unwrap() >= n
        })
        .await;
    }
}

/// A real MQTT client subscribed at QoS 1 with a persistent session, collecting every
/// message's payload (as JSON). It reconnects by itself after a broker restart.
pub struct Subscriber {
    messages: Arc<Mutex<Vec<(String, serde_json::Value)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    pub async fn start(port: u16, filter: &str) -> Subscriber {
        let mut options = rumqttc::MqttOptions::new("test-subscriber", "127.0.0.1", port);
        options
            .set_keep_alive(Duration::from_secs(10))
            .set_clean_session(false)
            .set_max_packet_size(1 << 21, 1 << 21);
        let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 100);
        let messages: Arc<Mutex<Vec<(String, serde_json::Value)>>> = Arc::default();
        let sink = messages.clone();
        let filter = filter.to_string();
        let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
        let mut subscribed_tx = Some(subscribed_tx);
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(ack))) => {
                        if !ack.session_present {
                            let client = client.clone();
                            let filter = filter.clone();
                            tokio::spawn(async move {
                                let _ = client.subscribe(filter, rumqttc::QoS::AtLeastOnce).await;
                            });
                        }
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                        if let Some(tx) = subscribed_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        let value = serde_json::from_slice(&p.payload).unwrap_or_default();
                        sink.lock().unwrap().push((p.topic.clone(), value));
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), subscribed_rx)
            .await
            .expect("the test subscriber subscribes")
            .unwrap();
        Subscriber { messages, task }
    }

    pub fn messages(&self) -> Vec<(String, serde_json::Value)> {
        self.messages.lock().unwrap().clone()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------------
// HTTP backend

#[derive(Clone, Debug)]
pub struct ReceivedBatch {
    /// When it arrived.
    pub at: Instant,
    /// When it arrived, wall clock (UTC ms), to compare with records' `ts`.
    pub received_ms: i64,
    pub status: u16,
    pub idempotency_key: Option<String>,
    pub content_encoding: Option<String>,
    pub authorization: Option<String>,
    pub body: serde_json::Value,
}

impl ReceivedBatch {
    pub fn records(&self) -> Vec<serde_json::Value> {
        records_of(&self.body).to_vec()
    }
}

/// The `records` array of a batch body; empty when the body has none.
fn records_of(body: &serde_json::Value) -> &[serde_json::Value] {
    body["records"].as_array().map_or(&[], Vec::as_slice)
}

/// Decides the status of each request from its 0-based index.
/// The status to answer the n-th request with. [`RESET_AFTER_COMMIT`] keeps the batch
/// (it counts as delivered) and then drops the connection without an answer.
pub type Script = Box<dyn Fn(usize) -> u16 + Send + Sync>;

/// A scripted "status": the backend commits the batch, then the connection is reset
/// before the response is written — the case idempotency keys exist for.
pub const RESET_AFTER_COMMIT: u16 = 999;

/// Like [`Script`], from the request's 0-based index and the number of records it carries.
pub type SizedScript = Box<dyn Fn(usize, usize) -> u16 + Send + Sync>;

fn by_index(script: Script) -> SizedScript {
    Box::new(move |index, _records| script(index))
}

pub struct Backend {
    pub url: String,
    requests: Arc<Mutex<Vec<ReceivedBatch>>>,
    script: Arc<Mutex<SizedScript>>,
    retry_after: Arc<Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct BackendState {
    requests: Arc<Mutex<Vec<ReceivedBatch>>>,
    script: Arc<Mutex<SizedScript>>,
    retry_after: Arc<Mutex<Option<String>>>,
}

impl BackendState {
    async fn answer(
        self,
        req: Request<hyper::body::Incoming>,
    ) -> Result<Response<Full<Bytes>>, Box<dyn std::error::Error + Send + Sync>> {
        let header = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let idempotency_key = header("idempotency-key");
        let content_encoding = header("content-encoding");
        let authorization = header("authorization");
        let raw = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let json = if content_encoding.as_deref() == Some("gzip") {
            let mut text = String::new();
            flate2::read::GzDecoder::new(&raw[..])
                .read_to_string(&mut text)
                .unwrap();
            text
        } else {
            String::from_utf8_lossy(&raw).into_owned()
        };
        let body: serde_json::Value =
            serde_json::from_str(&json).unwrap_or(serde_json::Value::Null);
        let mut all = self.requests.lock().unwrap();
        let records = records_of(&body).len();
        let status = (self.script.lock().unwrap())(all.len(), records);
        all.push(ReceivedBatch {
            at: Instant::now(),
            received_ms: tidegate::sample::now_ms(),
            status,
            idempotency_key,
            content_encoding,
            authorization,
            body,
        });
        drop(all);
        if status == RESET_AFTER_COMMIT {
            // An error from the service makes hyper close the connection unanswered.
            return Err("connection reset after commit".into());
        }
        let mut response = Response::builder().status(status);
        if !(200..300).contains(&status)
            && let Some(after) = self.retry_after.lock().unwrap().clone()
        {
            response = response.header("retry-after", after);
        }
        Ok(response
            .body(Full::new(Bytes::from_static(b"scripted answer")))
            .unwrap())
    }
}

impl Backend {
    pub async fn start(script: Script) -> Backend {
        Backend::start_with(by_index(script), None).await
    }

    /// A backend whose answers also depend on how many records a request carries.
    pub async fn start_sized(script: SizedScript) -> Backend {
        Backend::start_with(script, None).await
    }

    /// An HTTPS backend; its URL uses the host name `localhost`.
    pub async fn start_tls(script: Script, tls: Arc<rustls::ServerConfig>) -> Backend {
        Backend::start_with(by_index(script), Some(tokio_rustls::TlsAcceptor::from(tls))).await
    }

    async fn start_with(script: SizedScript, tls: Option<tokio_rustls::TlsAcceptor>) -> Backend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let url = match tls {
            Some(_) => format!("https://localhost:{port}/ingest"),
            None => format!("http://127.0.0.1:{port}/ingest"),
        };
        let state = BackendState {
            requests: Arc::default(),
            script: Arc::new(Mutex::new(script)),
            retry_after: Arc::default(),
        };
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = shared.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| state.clone().answer(req));
                    match tls {
                        Some(acceptor) => {
                            let handshake = tokio::time::timeout(
                                Duration::from_secs(5),
                                acceptor.accept(stream),
                            );
                            if let Ok(Ok(stream)) = handshake.await {
                                let _ = http1::Builder::new()
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await;
                            }
                        }
                        None => {
                            let _ = http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                });
            }
        });
        Backend {
            url,
            requests: state.requests,
            script: state.script,
            retry_after: state.retry_after,
            task,
        }
    }

    /// A `Retry-After` value sent with every non-2xx answer.
    pub fn set_retry_after(&self, value: Option<&str>) {
        *self.retry_after.lock().unwrap() = value.map(str::to_string);
    }

    pub fn set_script(&self, script: Script) {
        *self.script.lock().unwrap() = by_index(script);
    }

    pub fn requests(&self) -> Vec<ReceivedBatch> {
        self.requests.lock().unwrap().clone()
    }

    /// Records of the batches answered 2xx (or committed before a reset), in arrival order.
    pub fn delivered(&self) -> Vec<serde_json::Value> {
        self.requests()
            .iter()
            .filter(|r| (200..300).contains(&r.status) || r.status == RESET_AFTER_COMMIT)
            .flat_map(|r| r.records())
            .collect()
    }

    /// Records answered 2xx so far and the newest `ts` among them, without copying them
    /// (for benchmarks that poll while the backend is busy).
    pub fn delivered_summary(&self) -> (usize, i64) {
        let all = self.requests.lock().unwrap();
        let mut count = 0;
        let mut newest = i64::MIN;
        for r in all.iter().filter(|r| (200..300).contains(&r.status)) {
            if let Some(records) = r.body["records"].as_array() {
                count += records.len();
                for record in records {
                    newest = newest.max(record["ts"].as_i64().unwrap_or(i64::MIN));
                }
            }
        }
        (count, newest)
    }

    /// Distinct records delivered, by (device, payload field `n`).
    pub fn delivered_count(&self) -> usize {
        distinct(&self.delivered())
    }
}

pub fn distinct(records: &[serde_json::Value]) -> usize {
    records
        .iter()
        .map(|r| (r["device"].to_string(), r["fields"]["n"].to_string()))
        .collect::<std::collections::HashSet<_>>()
        .len()
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------------
// The daemon

pub struct Daemon {
    child: Option<Child>,
    pub config: PathBuf,
    pub log: PathBuf,
}

/// The binary under test: the one cargo built for this test, or, for benchmarks,
/// `TG_DAEMON_BIN` (a `dist` build as gateways run it, or a `profiling` build for perf).
pub fn daemon_binary() -> std::path::PathBuf {
    std::env::var_os("TG_DAEMON_BIN")
        .map(Into::into)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_tidegate").into())
}

impl Daemon {
    pub fn start(config: &Path, log: &Path) -> Daemon {
        Daemon::start_at_level(config, log, "debug")
    }

    /// Benchmarks run at `info`, as a production gateway would.
    pub fn start_at_level(config: &Path, log: &Path, level: &str) -> Daemon {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(daemon_binary())
            .args(["run", "-c"])
            .arg(config)
            .env("TIDEGATE_LOG", level)
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .unwrap();
        Daemon {
            child: Some(child),
            config: config.to_path_buf(),
            log: log.to_path_buf(),
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the daemon's log satisfies `check`; on timeout the failure shows the
    /// end of the log, which is usually what explains it.
    pub async fn wait_log(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&str) -> bool,
    ) {
        let start = Instant::now();
        loop {
            let text = self.log_text();
            if check(&text) {
                return;
            }
            if start.elapsed() >= timeout {
                let tail: Vec<&str> = text.lines().rev().take(25).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                let notable: Vec<&str> = text
                    .lines()
                    .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
                    .take(40)
                    .collect();
                panic!(
                    "timed out after {timeout:?} waiting for {what}; warnings and errors:\n{}\nthe log ends:\n{}",
                    notable.join("\n"),
                    tail.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGTERM, then waits (bounded) for the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            if start.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                panic!("tidegate did not exit within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no chance to flush or say goodbye.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => child.try_wait().unwrap().is_none(),
            None => false,
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Writes `tidegate.toml` in `dir`: the gateway and log settings every test shares (state
/// in `dir/state`, a summary line every second), then `body`.
pub fn write_test_config(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("tidegate.toml");
    let preamble = format!(
        "[gateway]\nid = \"gw-test\"\nstate_dir = \"{}\"\n\n[log]\nsummary_interval = \"1s\"\n",
        dir.join("state").display()
    );
    std::fs::write(&path, preamble + body).unwrap();
    path
}

/// A config with a simulated plant (one pump every 20 ms) and one HTTP uplink; `extra`
/// lands inside the `[[uplinks.http]]` table.
pub fn write_sim_config(dir: &Path, url: &str, extra: &str) -> PathBuf {
    write_test_config(
        dir,
        &format!(
            r#"

[[sources.simulated]]
name = "plant"
devices = 1
interval = "20ms"

[[uplinks.http]]
name = "cloud"
url = "{url}"
max_records = 10
linger = "100ms"
backoff_min = "50ms"
backoff_max = "300ms"
timeout = "5s"
{extra}
"#,
        ),
    )
}

/// Sequence numbers of the records in answered-2xx batches, in arrival order.
pub fn delivered_seqs(backend: &Backend) -> Vec<u64> {
    backend
        .delivered()
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect()
}

/// A test PKI: a CA, a server certificate for localhost/127.0.0.1, a client certificate.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca_pem: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    server_chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    server_key: rustls::pki_types::PrivateKeyDer<'static>,
    ca_der: rustls::pki_types::CertificateDer<'static>,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

/// What is wrong with a server certificate, for the TLS negative tests.
#[derive(Clone, Copy, Debug)]
pub enum BadServerCert {
    /// Valid only in 2020.
    Expired,
    /// Issued for another host name.
    WrongHost,
}

impl Pki {
    pub fn new() -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "tidegate test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);

        let server_key = KeyPair::generate().unwrap();
        let server_params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        let server = server_params.signed_by(&server_key, &issuer).unwrap();

        let client_key = KeyPair::generate().unwrap();
        let mut client_params = CertificateParams::new(vec!["gw-test".to_string()]).unwrap();
        client_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "gw-test");
        let client = client_params.signed_by(&client_key, &issuer).unwrap();

        let ca_pem = dir.path().join("ca.pem");
        std::fs::write(&ca_pem, ca.pem()).unwrap();
        let client_cert = dir.path().join("client.pem");
        std::fs::write(&client_cert, client.pem()).unwrap();
        let client_key_path = dir.path().join("client.key");
        std::fs::write(&client_key_path, client_key.serialize_pem()).unwrap();
        std::fs::write(dir.path().join("server.pem"), server.pem()).unwrap();
        std::fs::write(dir.path().join("server.key"), server_key.serialize_pem()).unwrap();
        Pki {
            ca_pem,
            client_cert,
            client_key: client_key_path,
            server_chain: vec![server.der().clone()],
            server_key: rustls::pki_types::PrivateKeyDer::try_from(server_key.serialize_der())
                .unwrap(),
            ca_der: ca.der().clone(),
            issuer,
            dir,
        }
    }

    /// A server config whose certificate is signed by the test CA but is wrong.
    pub fn bad_server_config(&self, what: BadServerCert) -> Arc<rustls::ServerConfig> {
        let key = rcgen::KeyPair::generate().unwrap();
        let names = match what {
            BadServerCert::Expired => vec!["localhost".to_string()],
            BadServerCert::WrongHost => vec!["historian.example.com".to_string()],
        };
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        if let BadServerCert::Expired = what {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Arc::new(
            rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(
                    vec![cert.der().clone()],
                    rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
                )
                .unwrap(),
        )
    }

    pub fn server_config(&self, require_client_cert: bool) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = if require_client_cert {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(self.ca_der.clone()).unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        Arc::new(
            builder
                .with_single_cert(self.server_chain.clone(), self.server_key.clone_key())
                .unwrap(),
        )
    }
}

/// A config for one MQTT source on `mqtt_port` and one HTTP uplink to `url`.
pub fn write_config(dir: &Path, mqtt_port: u16, url: &str, extra: &str) -> PathBuf {
    write_test_config(
        dir,
        &format!(
            r#"

[[sources.mqtt]]
name = "local"
port = {mqtt_port}
client_id = "tidegate-test-{mqtt_port}"
reconnect_min = "50ms"
reconnect_max = "500ms"

[[sources.mqtt.subscriptions]]
filter = "plant/+/+/telemetry"
topic_template = "plant/{{line}}/{{device}}/telemetry"
timestamp_field = "ts"

[[uplinks.http]]
name = "cloud"
url = "{url}"
max_records = 50
linger = "100ms"
backoff_min = "50ms"
backoff_max = "300ms"
timeout = "5s"
{extra}
"#,
        ),
    )
}

/// Resident memory of a process now, in KiB: (anonymous — its own heap and stacks;
/// file-backed — the pages of its binary and libraries it has touched, clean and shared
/// with the page cache). From /proc/PID/status.
pub fn rss_split(pid: u32) -> (u64, u64) {
    (status_kib(pid, "RssAnon"), status_kib(pid, "RssFile"))
}

/// (user + system CPU seconds, peak RSS in KiB) of a process, from /proc.
pub fn process_usage(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // After the ")", field 0 is the state; utime and stime are fields 11 and 12.
    let cpu = (ticks(11) + ticks(12)) / 100.0;
    (cpu, status_kib(pid, "VmHWM"))
}

/// One of the process's memory figures from `/proc/PID/status` (`VmHWM`, `RssAnon`...),
/// in KiB; 0 once the process is gone.
pub fn status_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// InfluxDB 1.x

/// A real InfluxDB 1.x (`influxd` from Debian's influxdb package) on loopback, with its
/// data in a temporary directory.
pub struct Influx {
    child: Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Influx {
    pub async fn start() -> Influx {
        let dir = tempfile::tempdir().unwrap();
        let (http, rpc) = (free_port(), free_port());
        let d = dir.path();
        let conf = format!(
            "reporting-disabled = true\nbind-address = \"127.0.0.1:{rpc}\"\n\
             [meta]\n  dir = \"{m}\"\n\
             [data]\n  dir = \"{data}\"\n  wal-dir = \"{wal}\"\n  query-log-enabled = false\n\
             [monitor]\n  store-enabled = false\n\
             [http]\n  bind-address = \"127.0.0.1:{http}\"\n  log-enabled = false\n",
            m = d.join("meta").display(),
            data = d.join("data").display(),
            wal = d.join("wal").display(),
        );
        let conf_path = d.join("influxdb.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new("influxd")
            .arg("-config")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("influxd comes with the influxdb package (.ci/run installs it)");
        let influx = Influx {
            child,
            url: format!("http://127.0.0.1:{http}"),
            _dir: dir,
        };
        // reqwest is built without a default TLS provider.
        tidegate::tls::install_crypto_provider();
        let client = reqwest::Client::new();
        let ping = format!("{}/ping", influx.url);
        wait_until_async("influxd to answer", Duration::from_secs(30), || {
            let client = client.clone();
            let ping = ping.clone();
            async move {
                client
                    .get(&ping)
                    .timeout(Duration::from_secs(1))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
        })
        .await;
        influx
    }

    /// Runs an InfluxQL statement; returns the JSON answer.
    pub async fn query(&self, db: Option<&str>, q: &str) -> serde_json::Value {
        let mut url = reqwest::Url::parse(&format!("{}/query", self.url)).unwrap();
        url.query_pairs_mut().append_pair("q", q);
        if let Some(db) = db {
            url.query_pairs_mut().append_pair("db", db);
        }
        let text = reqwest::Client::new()
            .post(url)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        serde_json::from_str(&text).unwrap()
    }
}

impl Drop for Influx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls an async check until it returns true or `timeout` passes.
pub async fn wait_until_async<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
