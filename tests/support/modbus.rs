//! Modbus field devices for the tests: an in-process tokio-modbus server (TCP on
//! 127.0.0.1:0, or RTU on one end of a socat pty pair) with per-unit register contents
//! and fault injection, a proxy that cuts TCP connections like a rebooting PLC, and a
//! record of every function code that reached the devices.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};
use tokio_util::sync::CancellationToken;

/// How a unit behaves.
#[derive(Clone, Debug, Default)]
pub struct Unit {
    pub holding: HashMap<u16, u16>,
    pub input: HashMap<u16, u16>,
    pub coils: HashMap<u16, bool>,
    pub discrete: HashMap<u16, bool>,
    /// Never answers (a dead or absent unit).
    pub silent: bool,
    /// Answers every `n`-th request `delay` late (after the client's deadline).
    pub late_every: Option<(u32, Duration)>,
    /// Answers requests starting at (function code, address) with this exception.
    pub exceptions: HashMap<(u8, u16), ExceptionCode>,
    /// Answers every `n`-th register read with one register fewer than asked for.
    pub short_every: Option<u32>,
}

impl Unit {
    /// Writes `words` into holding registers from `address` on.
    pub fn set_holding(&mut self, address: u16, words: &[u16]) {
        for (i, w) in words.iter().enumerate() {
            self.holding.insert(address + i as u16, *w);
        }
    }

    pub fn set_input(&mut self, address: u16, words: &[u16]) {
        for (i, w) in words.iter().enumerate() {
            self.input.insert(address + i as u16, *w);
        }
    }
}

/// Everything the simulated devices saw.
#[derive(Default)]
pub struct Traffic {
    /// (unit, function code, start address) of every request, in order.
    pub requests: Vec<(u8, u8, u16)>,
    counters: HashMap<u8, u32>,
}

#[derive(Clone)]
pub struct Devices {
    pub units: Arc<Mutex<HashMap<u8, Unit>>>,
    pub traffic: Arc<Mutex<Traffic>>,
    /// An RS-485 line's wire time, which a pty does not have: each answer waits as long
    /// as the request and the answer take to cross a line at this baud rate (11 bits a
    /// character, 8E1 or 8N2), plus the 3.5-character silence that ends the request. (The
    /// silence after the answer is the master's to keep before its next request.)
    pub wire_baud: Option<u32>,
}

type Answer = Pin<Box<dyn Future<Output = Result<Option<Response>, ExceptionCode>> + Send>>;

impl Devices {
    pub fn new(units: HashMap<u8, Unit>) -> Self {
        Devices {
            units: Arc::new(Mutex::new(units)),
            traffic: Arc::default(),
            wire_baud: None,
        }
    }

    pub fn with_wire_timing(mut self, baud: u32) -> Self {
        self.wire_baud = Some(baud);
        self
    }

    /// Wire time of a read request (8 bytes) and its answer of `answer_bytes`.
    fn wire_time(&self, answer_bytes: usize) -> Duration {
        let Some(baud) = self.wire_baud else {
            return Duration::ZERO;
        };
        let chars = 8.0 + answer_bytes as f64 + 3.5;
        Duration::from_secs_f64(chars * 11.0 / f64::from(baud))
    }

    pub fn function_codes(&self) -> std::collections::BTreeSet<u8> {
        self.traffic
            .lock()
            .unwrap()
            .requests
            .iter()
            .map(|r| r.1)
            .collect()
    }

    pub fn requests_to(&self, unit: u8, function: u8, address: u16) -> usize {
        self.traffic
            .lock()
            .unwrap()
            .requests
            .iter()
            .filter(|r| **r == (unit, function, address))
            .count()
    }

    fn answer(&self, request: SlaveRequest<'static>) -> Answer {
        let unit_id = request.slave;
        let function = request.request.function_code().value();
        let address = match &request.request {
            Request::ReadCoils(a, _)
            | Request::ReadDiscreteInputs(a, _)
            | Request::ReadHoldingRegisters(a, _)
            | Request::ReadInputRegisters(a, _) => *a,
            _ => 0,
        };
        let nth = {
            let mut traffic = self.traffic.lock().unwrap();
            traffic.requests.push((unit_id, function, address));
            let counter = traffic.counters.entry(unit_id).or_default();
            *counter += 1;
            *counter
        };
        let units = self.units.lock().unwrap();
        let Some(unit) = units.get(&unit_id).cloned() else {
            return Box::pin(async { Ok(None) });
        };
        drop(units);
        if unit.silent {
            return Box::pin(async { Ok(None) });
        }
        if let Some(code) = unit.exceptions.get(&(function, address)) {
            let code = *code;
            let wire = self.wire_time(5);
            return Box::pin(async move {
                tokio::time::sleep(wire).await;
                Err(code)
            });
        }
        let words = |map: &HashMap<u16, u16>, a: u16, n: u16| {
            (a..a + n).map(|i| *map.get(&i).unwrap_or(&0)).collect()
        };
        let bits = |map: &HashMap<u16, bool>, a: u16, n: u16| {
            (a..a + n).map(|i| *map.get(&i).unwrap_or(&false)).collect()
        };
        let short = matches!(unit.short_every, Some(every) if nth % every == 0);
        let count = |n: u16| if short { n.saturating_sub(1) } else { n };
        let response = match request.request {
            Request::ReadHoldingRegisters(a, n) => {
                Response::ReadHoldingRegisters(words(&unit.holding, a, count(n)))
            }
            Request::ReadInputRegisters(a, n) => {
                Response::ReadInputRegisters(words(&unit.input, a, count(n)))
            }
            Request::ReadCoils(a, n) => Response::ReadCoils(bits(&unit.coils, a, n)),
            Request::ReadDiscreteInputs(a, n) => {
                Response::ReadDiscreteInputs(bits(&unit.discrete, a, n))
            }
            _ => return Box::pin(async { Err(ExceptionCode::IllegalFunction) }),
        };
        let answer_bytes = match &response {
            Response::ReadHoldingRegisters(w) | Response::ReadInputRegisters(w) => 5 + 2 * w.len(),
            Response::ReadCoils(b) | Response::ReadDiscreteInputs(b) => 5 + b.len().div_ceil(8),
            _ => 5,
        };
        let wire = self.wire_time(answer_bytes);
        match unit.late_every {
            Some((every, delay)) if nth % every == 0 => Box::pin(async move {
                tokio::time::sleep(delay + wire).await;
                Ok(Some(response))
            }),
            _ => Box::pin(async move {
                tokio::time::sleep(wire).await;
                Ok(Some(response))
            }),
        }
    }
}

impl tokio_modbus::server::Service for Devices {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Answer;

    fn call(&self, request: Self::Request) -> Self::Future {
        self.answer(request)
    }
}

/// Serves `devices` over Modbus TCP on 127.0.0.1 until `stop`.
pub async fn serve_tcp(devices: Devices, stop: CancellationToken) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio_modbus::server::tcp::Server::new(listener);
    tokio::spawn(async move {
        let on_connected = move |stream, _peer| {
            let devices = devices.clone();
            async move { Ok(Some((devices, stream))) }
        };
        let _ = server
            .serve_until(&on_connected, |_| {}, stop.cancelled_owned())
            .await;
    });
    address
}

/// A socat pty pair: the test's device end and the gateway's end.
pub struct PtyPair {
    child: Child,
    pub device_end: PathBuf,
    pub gateway_end: PathBuf,
}

impl PtyPair {
    pub fn new(dir: &Path) -> PtyPair {
        let device_end = dir.join("tty-device");
        let gateway_end = dir.join("tty-gateway");
        let child = Command::new("socat")
            .arg(format!("pty,raw,echo=0,link={}", device_end.display()))
            .arg(format!("pty,raw,echo=0,link={}", gateway_end.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat must be installed (apt-get install socat); .ci/run installs it");
        let start = Instant::now();
        while !(device_end.exists() && gateway_end.exists()) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "socat did not create the pty pair"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        PtyPair {
            child,
            device_end,
            gateway_end,
        }
    }
}

impl Drop for PtyPair {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Serves `devices` over Modbus RTU on the device end of `pty` until `stop`.
pub fn serve_rtu(devices: Devices, pty: &PtyPair, stop: CancellationToken) {
    let port = tokio_serial::SerialStream::open(&tokio_serial::new(
        pty.device_end.to_string_lossy(),
        19_200,
    ))
    .unwrap();
    let server = tokio_modbus::server::rtu::Server::new(port);
    tokio::spawn(async move {
        let _ = server.serve_until(devices, stop.cancelled_owned()).await;
    });
}

/// A TCP proxy in front of a device that can cut every connection, like a PLC reboot.
pub struct FlakyProxy {
    pub address: SocketAddr,
    cut: Arc<tokio::sync::Notify>,
    pub connections: Arc<Mutex<u64>>,
}

impl FlakyProxy {
    pub async fn start(target: SocketAddr) -> FlakyProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let cut = Arc::new(tokio::sync::Notify::new());
        let connections = Arc::new(Mutex::new(0));
        let (cut2, count) = (cut.clone(), connections.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                *count.lock().unwrap() += 1;
                let cut = cut2.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.notified() => {}
                    }
                });
            }
        });
        FlakyProxy {
            address,
            cut,
            connections,
        }
    }

    /// Drops every open connection.
    pub fn cut_all(&self) {
        self.cut.notify_waiters();
    }
}

/// Registers for `value` (big-endian bytes) in `order`: the wire layout by definition —
/// words reversed for CDAB/DCBA, bytes swapped within each word for BADC/DCBA.
pub fn encode(be: &[u8], order: &str) -> Vec<u16> {
    let n = be.len();
    let words = n / 2;
    let mut wire = vec![0u8; n];
    for (pos, byte) in be.iter().enumerate() {
        let (word, within) = (pos / 2, pos % 2);
        let wire_word = if matches!(order, "CDAB" | "DCBA") {
            words - 1 - word
        } else {
            word
        };
        let wire_within = if matches!(order, "BADC" | "DCBA") {
            1 - within
        } else {
            within
        };
        wire[wire_word * 2 + wire_within] = *byte;
    }
    wire.chunks(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect()
}

/// Open file descriptors of a process.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Records in an NDJSON file, parsed.
pub fn read_ndjson(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}
