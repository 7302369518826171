//! One task per bus. A serial line is one serialisation domain: one request at a time,
//! with the standard's silent interval between frames. A TCP endpoint is one connection,
//! polled in parallel with the other endpoints (each has its own task).
//!
//! Every request has a deadline. After a timeout the link is resynchronised before the
//! next request — the TCP connection is dropped and reopened, the serial port is reopened
//! and drained until quiet — so a late reply is never read as the answer to the next
//! request.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};
use tokio_modbus::client::{Client, Context, Reader};
use tokio_modbus::slave::SlaveContext;
use tokio_modbus::{ExceptionCode, Slave};
use tokio_util::sync::CancellationToken;

use super::breaker::{Breaker, BreakerState, Transition};
use super::plan::{Answer, ReadRequest, Table, extract};
use super::schedule::{Schedule, phase_for};
use crate::config::{ModbusDeviceConfig, ModbusLink, ModbusSourceConfig, raw::Parity};
use crate::ops::Stats;
use crate::sample::{BadReason, Quality, Sample, now_ms};
use crate::store::writer::Ingest;
use crate::uplink::backoff::Backoff;

/// Consecutive failed polls that open a device's breaker.
const BREAKER_THRESHOLD: u32 = 3;
/// Longest time a dead device waits between probes.
const BREAKER_MAX_BACKOFF: Duration = Duration::from_secs(60);
/// The first wait between probes, in request timeouts (at least the poll interval and a
/// second). A probe of a dead device costs its bus a timeout, and on a serial line a
/// drain of at most as long: four timeouts apart, a dead unit's probes take at most a
/// third of the line even before the waits grow; one apart, up to two thirds. Seven
/// healthy units of eight at 19,200 baud made 8.47 polls/s in the first minute with
/// this, 8.37 with one timeout, 9.77 once the probes were a minute apart.
const BREAKER_FIRST_BACKOFF_IN_TIMEOUTS: u32 = 4;
/// How long a request refused with a permanent exception (01, 02, 03) is left alone
/// before it is tried again (the PLC program may have changed).
const PERMANENT_EXCEPTION_HOLD: Duration = Duration::from_secs(300);
/// Longest quiet wait when draining a serial line after a timeout.
const MAX_DRAIN: Duration = Duration::from_millis(500);

/// Runs the bus until shutdown.
pub async fn run(
    config: ModbusSourceConfig,
    tx: mpsc::Sender<Ingest>,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
    stage: Arc<crate::ops::health::Stage>,
) {
    let start = Instant::now();
    let mut devices: Vec<Device> = config
        .devices
        .iter()
        .map(|cfg| Device::new(cfg.clone(), start))
        .collect();
    if devices.is_empty() {
        return;
    }
    let mut link = Link::new(config.name.clone(), config.link.clone());
    let mut backpressured = false;
    // A token of this bus's own, waited on by one future for the whole run: a thousand
    // buses each making a fresh wait on the shared token twice a poll all took its lock
    // and joined its waiter list (the lock was 1.9% of a profile at 1,000 devices).
    let own_shutdown = shutdown.child_token();
    let cancelled = own_shutdown.cancelled();
    tokio::pin!(cancelled);
    loop {
        let index = (0..devices.len())
            .min_by_key(|&i| devices[i].schedule.next_due())
            .expect("at least one device");
        let due = devices[index].schedule.next_due();
        tokio::select! {
            _ = tokio::time::sleep_until(due) => {}
            _ = &mut cancelled => break,
        }
        let device = &mut devices[index];
        let now = Instant::now();
        if !device.breaker.allow(now) {
            Stats::add(&stats.modbus_skipped_breaker, 1);
            device.schedule.advance(now);
            continue;
        }
        // A poll has no one to send it again: it is made only when there is room for
        // its sample. With the store full under the `block` policy, polls are skipped
        // and counted rather than samples dropped.
        let refusing = stats
            .store_refusing
            .load(std::sync::atomic::Ordering::Relaxed);
        let reserved = if refusing {
            Err(mpsc::error::TrySendError::Full(()))
        } else {
            tx.try_reserve()
        };
        let permit = match reserved {
            Ok(permit) => {
                if backpressured {
                    log::info!(
                        "modbus {}: the store takes samples again; polling resumes",
                        config.name
                    );
                    backpressured = false;
                }
                permit
            }
            Err(mpsc::error::TrySendError::Full(())) => {
                Stats::add(&stats.modbus_skipped_backpressure, 1);
                if !backpressured {
                    log::warn!(
                        "modbus {}: the store is not taking samples (full, or slow disk); skipping polls until it does",
                        config.name
                    );
                    backpressured = true;
                }
                device.schedule.advance(now);
                continue;
            }
            Err(mpsc::error::TrySendError::Closed(())) => break,
        };
        let busy = stage.busy();
        let sample = tokio::select! {
            sample = poll(&mut link, device, &config.name, &stats) => sample,
            _ = &mut cancelled => break,
        };
        drop(busy);
        let skipped = device.schedule.advance(Instant::now());
        if skipped > 0 {
            Stats::add(&stats.modbus_skipped_overrun, skipped);
            log::debug!(
                "modbus {}: device {} missed {skipped} poll slots (overrun)",
                config.name,
                device.cfg.name
            );
        }
        Stats::add(&stats.samples_in, 1);
        permit.send(Ingest::new(vec![sample]));
    }
    link.close().await;
    log::info!("source {}: stopped", config.name);
}

struct Device {
    cfg: ModbusDeviceConfig,
    schedule: Schedule,
    breaker: Breaker,
    /// Per request: held back after a permanent exception, until the instant given.
    held: Vec<Option<(Instant, Quality)>>,
    /// The last reported condition, so that only changes are logged.
    condition: Condition,
    failed_polls_in_a_row: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Condition {
    Answering,
    Failing(String),
}

impl Device {
    fn new(cfg: ModbusDeviceConfig, now: Instant) -> Self {
        let interval = cfg.poll_interval;
        let min_backoff = interval
            .max(cfg.timeout * BREAKER_FIRST_BACKOFF_IN_TIMEOUTS)
            .max(Duration::from_secs(1));
        Device {
            schedule: Schedule::new(interval, phase_for(&cfg.name, interval), now),
            breaker: Breaker::new(
                BREAKER_THRESHOLD,
                min_backoff,
                BREAKER_MAX_BACKOFF.max(min_backoff),
            ),
            held: vec![None; cfg.requests.len()],
            condition: Condition::Answering,
            failed_polls_in_a_row: 0,
            cfg,
        }
    }
}

/// How one request ended.
pub(crate) enum Outcome {
    Registers(Vec<u16>),
    Bits(Vec<bool>),
    Exception(ExceptionCode),
    Timeout,
    Transport(String),
}

/// Polls every request of the device once; returns its sample.
async fn poll(link: &mut Link, device: &mut Device, source: &str, stats: &Stats) -> Sample {
    Stats::add(&stats.modbus_polls, 1);
    let mut sample = Sample::new(source, &device.cfg.name, now_ms());
    let mut read_any = false;
    let mut unreachable = false;
    let mut first_problem: Option<Quality> = None;
    let unit = device.cfg.unit;
    // Retries are for a healthy device's lost frame. A probe of a device already taken
    // for dead gets one try: each retry would cost its neighbours another timeout.
    let retries = if device.breaker.state() == BreakerState::HalfOpen {
        0
    } else {
        device.cfg.retries
    };
    for (ri, request) in device.cfg.requests.iter().enumerate() {
        let now = Instant::now();
        if let Some((until, quality)) = &device.held[ri] {
            if now < *until {
                for &pi in &request.points {
                    sample
                        .field_quality
                        .insert(device.cfg.points[pi].name.clone(), quality.clone());
                }
                first_problem.get_or_insert_with(|| quality.clone());
                continue;
            }
            device.held[ri] = None;
        }
        let mut attempts = 0;
        let outcome = loop {
            let outcome = link.read(unit, request, device.cfg.timeout).await;
            match outcome {
                Outcome::Timeout | Outcome::Transport(_) if attempts < retries => attempts += 1,
                other => break other,
            }
        };
        let quality = match outcome {
            Outcome::Registers(words) => {
                read_any = true;
                store_values(&mut sample, device, request, Answer::Registers(&words));
                None
            }
            Outcome::Bits(bits) => {
                read_any = true;
                store_values(&mut sample, device, request, Answer::Bits(&bits));
                None
            }
            Outcome::Exception(code) => {
                Stats::add(&stats.modbus_exceptions, 1);
                let number = u8::from(code);
                let quality = Quality::Bad {
                    reason: BadReason::Exception,
                    detail: format!(
                        "exception {number:02X} ({}) on {request}",
                        exception_name(code)
                    ),
                };
                if is_permanent(code) {
                    log::warn!(
                        "modbus {source}: device {} refused {request} with exception {number:02X} ({}): check the register map; \
                         not asked again for {}",
                        device.cfg.name,
                        exception_name(code),
                        humantime::format_duration(PERMANENT_EXCEPTION_HOLD)
                    );
                    device.held[ri] =
                        Some((Instant::now() + PERMANENT_EXCEPTION_HOLD, quality.clone()));
                    read_any = true; // the device answered: it is alive
                } else if matches!(
                    code,
                    ExceptionCode::GatewayPathUnavailable | ExceptionCode::GatewayTargetDevice
                ) {
                    unreachable = true;
                } else {
                    read_any = true;
                }
                Some(quality)
            }
            Outcome::Timeout => {
                Stats::add(&stats.modbus_timeouts, 1);
                unreachable = true;
                Some(Quality::Bad {
                    reason: BadReason::Timeout,
                    detail: format!(
                        "no answer within {} to {request}",
                        humantime::format_duration(device.cfg.timeout)
                    ),
                })
            }
            Outcome::Transport(e) => {
                unreachable = true;
                Some(Quality::Bad {
                    reason: BadReason::Disconnected,
                    detail: e,
                })
            }
        };
        if let Some(quality) = quality {
            for &pi in &request.points {
                sample
                    .field_quality
                    .insert(device.cfg.points[pi].name.clone(), quality.clone());
            }
            // A device that did not answer at all will not answer the next read of
            // this poll either: asking would cost the bus another timeout (and, on a
            // serial line, another drain) per read.
            if unreachable && !read_any {
                for later in &device.cfg.requests[ri + 1..] {
                    for &pi in &later.points {
                        sample
                            .field_quality
                            .insert(device.cfg.points[pi].name.clone(), quality.clone());
                    }
                }
                first_problem.get_or_insert(quality);
                break;
            }
            first_problem.get_or_insert(quality);
        }
    }

    if sample.fields.is_empty()
        && let Some(problem) = &first_problem
    {
        // Nothing read: one sample-level quality says it; per-field entries would repeat it.
        sample.quality = problem.clone();
        sample.field_quality.clear();
    }
    let failed = !read_any && unreachable;
    let name = &device.cfg.name;
    if failed {
        Stats::add(&stats.modbus_failed_polls, 1);
        device.failed_polls_in_a_row += 1;
        let reason = first_problem.as_ref().map(describe).unwrap_or_default();
        if device.condition == Condition::Answering {
            log::warn!("modbus {source}: device {name} (unit {unit}) stopped answering: {reason}");
            device.condition = Condition::Failing(reason);
        }
        if let Transition::Opened { backoff } = device.breaker.failure(Instant::now()) {
            log::warn!(
                "modbus {source}: device {name} failed {} polls in a row; probing it every {} to {} instead of every poll",
                BREAKER_THRESHOLD,
                humantime::format_duration(backoff),
                humantime::format_duration(BREAKER_MAX_BACKOFF)
            );
        }
    } else {
        if let Condition::Failing(_) = device.condition {
            log::info!(
                "modbus {source}: device {name} (unit {unit}) answering again after {} failed polls",
                device.failed_polls_in_a_row
            );
            device.condition = Condition::Answering;
        }
        device.failed_polls_in_a_row = 0;
        device.breaker.success();
    }
    sample
}

fn store_values(sample: &mut Sample, device: &Device, request: &ReadRequest, answer: Answer<'_>) {
    for (pi, value) in extract(&device.cfg.points, request, answer) {
        let name = device.cfg.points[pi].name.clone();
        match value {
            Ok(value) => {
                sample.fields.insert(name, value);
            }
            Err(quality) => {
                sample.field_quality.insert(name, quality);
            }
        }
    }
}

fn describe(quality: &Quality) -> String {
    match quality {
        Quality::Good => "good".into(),
        Quality::Bad { detail, .. } => detail.clone(),
    }
}

/// 01, 02 and 03 mean the request itself is wrong for this device: asking again every
/// poll only loads the bus.
fn is_permanent(code: ExceptionCode) -> bool {
    matches!(
        code,
        ExceptionCode::IllegalFunction
            | ExceptionCode::IllegalDataAddress
            | ExceptionCode::IllegalDataValue
    )
}

pub fn exception_name(code: ExceptionCode) -> &'static str {
    match code {
        ExceptionCode::IllegalFunction => "illegal function",
        ExceptionCode::IllegalDataAddress => "illegal data address",
        ExceptionCode::IllegalDataValue => "illegal data value",
        ExceptionCode::ServerDeviceFailure => "server device failure",
        ExceptionCode::Acknowledge => "acknowledge",
        ExceptionCode::ServerDeviceBusy => "server device busy",
        ExceptionCode::MemoryParityError => "memory parity error",
        ExceptionCode::GatewayPathUnavailable => "gateway path unavailable",
        ExceptionCode::GatewayTargetDevice => "gateway target device failed to respond",
        _ => "unknown exception",
    }
}

/// The connection of one bus, opened lazily and reopened with back-off.
pub struct Link {
    source: String,
    config: ModbusLink,
    context: Option<Context>,
    reconnect: Backoff,
    /// No connection attempt before this instant (after a failed one).
    retry_at: Option<Instant>,
    last_error: Option<String>,
    /// When the last request on a serial line ended: the next waits the silent interval.
    last_request_end: Option<Instant>,
}

impl Link {
    pub fn new(source: String, config: ModbusLink) -> Self {
        Link {
            source,
            config,
            context: None,
            reconnect: Backoff::new(Duration::from_millis(200), Duration::from_secs(30)),
            retry_at: None,
            last_error: None,
            last_request_end: None,
        }
    }

    async fn connect(&mut self) -> Result<(), String> {
        if self.context.is_some() {
            return Ok(());
        }
        if let Some(at) = self.retry_at
            && Instant::now() < at
        {
            return Err(self
                .last_error
                .clone()
                .unwrap_or_else(|| "not connected".into()));
        }
        let result = match &self.config {
            ModbusLink::Tcp {
                host,
                port,
                connect_timeout,
            } => connect_tcp(host, *port, *connect_timeout).await,
            ModbusLink::Rtu { .. } => self.open_serial(Duration::ZERO).await,
        };
        match result {
            Ok(context) => {
                if self.last_error.take().is_some() || self.retry_at.is_some() {
                    log::info!("modbus {}: connected to {}", self.source, self.describe());
                }
                self.retry_at = None;
                self.reconnect.reset();
                self.context = Some(context);
                Ok(())
            }
            Err(e) => {
                if self.last_error.as_deref() != Some(e.as_str()) {
                    log::warn!(
                        "modbus {}: cannot connect to {}: {e}; retrying with back-off",
                        self.source,
                        self.describe()
                    );
                }
                self.last_error = Some(e.clone());
                self.retry_at = Some(Instant::now() + self.reconnect.next_delay());
                Err(e)
            }
        }
    }

    fn describe(&self) -> String {
        match &self.config {
            ModbusLink::Tcp { host, port, .. } => format!("{host}:{port}"),
            ModbusLink::Rtu { device, .. } => device.display().to_string(),
        }
    }

    /// Opens the serial port and reads away whatever arrives until the line has been
    /// quiet for `quiet` (a late reply to a request that timed out).
    async fn open_serial(&mut self, quiet: Duration) -> Result<Context, String> {
        let ModbusLink::Rtu {
            device,
            baud,
            parity,
            data_bits,
            stop_bits,
            ..
        } = &self.config
        else {
            unreachable!("serial settings on a serial link");
        };
        let builder = tokio_serial::new(device.to_string_lossy(), *baud)
            .parity(match parity {
                Parity::None => tokio_serial::Parity::None,
                Parity::Even => tokio_serial::Parity::Even,
                Parity::Odd => tokio_serial::Parity::Odd,
            })
            .data_bits(if *data_bits == 7 {
                tokio_serial::DataBits::Seven
            } else {
                tokio_serial::DataBits::Eight
            })
            .stop_bits(if *stop_bits == 2 {
                tokio_serial::StopBits::Two
            } else {
                tokio_serial::StopBits::One
            });
        let mut port = tokio_serial::SerialStream::open(&builder)
            .map_err(|e| format!("{}: {e}", device.display()))?;
        if !quiet.is_zero() {
            let deadline = Instant::now() + MAX_DRAIN;
            let mut buf = [0u8; 256];
            let mut drained = 0usize;
            while Instant::now() < deadline {
                match timeout(quiet, port.read(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => drained += n,
                    _ => break,
                }
            }
            if drained > 0 {
                log::debug!(
                    "modbus {}: discarded {drained} late bytes on {}",
                    self.source,
                    device.display()
                );
            }
        }
        Ok(tokio_modbus::client::rtu::attach(port))
    }

    /// Called after a timeout: nothing that arrives late may be taken for the next answer.
    async fn resync(&mut self, request_timeout: Duration) {
        if let Some(mut context) = self.context.take() {
            let _ = timeout(Duration::from_millis(100), context.disconnect()).await;
        }
        if matches!(self.config, ModbusLink::Rtu { .. }) {
            let quiet = request_timeout.min(MAX_DRAIN);
            match self.open_serial(quiet).await {
                Ok(context) => self.context = Some(context),
                Err(e) => {
                    self.last_error = Some(e);
                    self.retry_at = Some(Instant::now() + self.reconnect.next_delay());
                }
            }
        }
    }

    /// One read request with its deadline.
    pub(crate) async fn read(
        &mut self,
        unit: u8,
        request: &ReadRequest,
        deadline: Duration,
    ) -> Outcome {
        if let Err(e) = self.connect().await {
            return Outcome::Transport(format!("not connected: {e}"));
        }
        if let ModbusLink::Rtu {
            inter_request_delay,
            ..
        } = &self.config
            && let Some(end) = self.last_request_end
        {
            tokio::time::sleep_until(end + *inter_request_delay).await;
        }
        let context = self.context.as_mut().expect("connected above");
        context.set_slave(Slave(unit));
        let (start, count) = (request.start, request.count);
        let result = match request.table {
            Table::HoldingRegister => {
                timeout(deadline, context.read_holding_registers(start, count))
                    .await
                    .map(|r| r.map(|r| r.map(Outcome::Registers)))
            }
            Table::InputRegister => timeout(deadline, context.read_input_registers(start, count))
                .await
                .map(|r| r.map(|r| r.map(Outcome::Registers))),
            Table::Coil => timeout(deadline, context.read_coils(start, count))
                .await
                .map(|r| r.map(|r| r.map(|bits| Outcome::Bits(trimmed(bits, count))))),
            Table::DiscreteInput => timeout(deadline, context.read_discrete_inputs(start, count))
                .await
                .map(|r| r.map(|r| r.map(|bits| Outcome::Bits(trimmed(bits, count))))),
        };
        let outcome = match result {
            Ok(Ok(Ok(Outcome::Registers(words)))) if words.len() != usize::from(count) => {
                // Unit id and function code matched, so this is most likely a late answer
                // to an earlier read of the same unit: the framing cannot be trusted.
                self.resync(deadline).await;
                Outcome::Transport(format!(
                    "answer of {} registers to a read of {count}",
                    words.len()
                ))
            }
            Ok(Ok(Ok(outcome))) => outcome,
            Ok(Ok(Err(code))) => Outcome::Exception(code),
            Ok(Err(e)) => {
                // Protocol or transport error: the stream's framing cannot be trusted.
                self.resync(deadline).await;
                Outcome::Transport(e.to_string())
            }
            Err(_elapsed) => {
                self.resync(deadline).await;
                Outcome::Timeout
            }
        };
        self.last_request_end = Some(Instant::now());
        outcome
    }

    pub async fn close(&mut self) {
        if let Some(mut context) = self.context.take() {
            let _ = timeout(Duration::from_millis(200), context.disconnect()).await;
        }
    }
}

/// Coil answers come in whole bytes; keep the bits asked for.
fn trimmed(mut bits: Vec<bool>, count: u16) -> Vec<bool> {
    bits.truncate(usize::from(count));
    bits
}

async fn connect_tcp(host: &str, port: u16, connect_timeout: Duration) -> Result<Context, String> {
    let connect = async {
        let stream = tokio::net::TcpStream::connect((host, port)).await?;
        stream.set_nodelay(true)?;
        Ok::<_, std::io::Error>(tokio_modbus::client::tcp::attach(stream))
    };
    match timeout(connect_timeout, connect).await {
        Ok(Ok(context)) => Ok(context),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "no connection within {}",
            humantime::format_duration(connect_timeout)
        )),
    }
}

/// The longest one poll of any device of the line may take: every read of its plan
/// timing out on every try, with the gaps between.
pub fn longest_poll(config: &ModbusSourceConfig) -> Duration {
    let gap = match &config.link {
        crate::config::ModbusLink::Rtu {
            inter_request_delay,
            ..
        } => *inter_request_delay,
        crate::config::ModbusLink::Tcp {
            connect_timeout, ..
        } => *connect_timeout,
    };
    config
        .devices
        .iter()
        .map(|d| {
            let tries = u32::from(d.retries) + 1;
            (d.timeout + gap) * tries * (d.requests.len().max(1) as u32)
        })
        .max()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(poll_interval: Duration, timeout: Duration) -> Device {
        let cfg = ModbusDeviceConfig {
            name: "meter".into(),
            unit: 1,
            poll_interval,
            timeout,
            retries: 0,
            points: Vec::new().into(),
            requests: Vec::new().into(),
        };
        Device::new(cfg, Instant::now())
    }

    /// How long the breaker of a device that has just failed its third poll waits.
    fn first_wait(device: &mut Device) -> Duration {
        let now = Instant::now();
        for _ in 1..BREAKER_THRESHOLD {
            assert_eq!(device.breaker.failure(now), Transition::None);
        }
        match device.breaker.failure(now) {
            Transition::Opened { backoff } => backoff,
            other => panic!("the breaker did not open: {other:?}"),
        }
    }

    #[test]
    fn the_first_probe_waits_four_timeouts_the_poll_interval_or_a_second_whichever_is_longest() {
        let (ms, s) = (Duration::from_millis, Duration::from_secs);
        assert_eq!(first_wait(&mut device(ms(100), s(1))), s(4));
        assert_eq!(first_wait(&mut device(s(10), s(1))), s(10));
        assert_eq!(first_wait(&mut device(ms(100), ms(100))), s(1));
    }
}
