//! Configuration: TOML files → raw serde types → pure validation collecting every error
//! with its file, line and key path → the typed [`Config`] the rest of tidegate builds
//! from. Owns nothing at run time: it never opens a socket or a store, so `tidegate
//! check` can use it on a live system.

mod files;
mod modbus;
pub mod raw;
pub mod secret;
mod sections;
pub mod units;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use files::{ConfigDocument, Diagnostic, Location};
pub use modbus::{parse_address, parse_notation, silent_interval};
pub use raw::{Durability, FullPolicy, StdoutFormat, TimestampFormat};
pub use secret::{Secret, SecretRef};
pub use validate::{Environment, SystemEnvironment, validate};

use crate::sources::mqtt::topic::TopicTemplate;

/// Default location of the main config file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/tidegate/tidegate.toml";

/// Every problem found in the config. Displays one line per problem.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub diagnostics: Vec<Diagnostic>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.diagnostics.len();
        writeln!(f, "{n} config error{}:", if n == 1 { "" } else { "s" })?;
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i + 1 < n {
                writeln!(f, "  {d}")?;
            } else {
                write!(f, "  {d}")?;
            }
        }
        Ok(())
    }
}

/// Reads, merges and validates the config at `path` (plus its `conf.d/` drop-ins).
pub fn load(path: &Path, env: &dyn Environment) -> Result<Config, ConfigError> {
    let doc = ConfigDocument::load(path).map_err(|diagnostics| ConfigError { diagnostics })?;
    validate(&doc, env).map_err(|diagnostics| ConfigError { diagnostics })
}

/// Validates config given as text (the embedded demo config, tests).
pub fn from_str(name: &str, text: &str, env: &dyn Environment) -> Result<Config, ConfigError> {
    let doc = ConfigDocument::from_sources(vec![(PathBuf::from(name), text.to_string())])
        .map_err(|diagnostics| ConfigError { diagnostics })?;
    validate(&doc, env).map_err(|diagnostics| ConfigError { diagnostics })
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub gateway: GatewayConfig,
    pub log: LogConfig,
    pub store: StoreConfig,
    pub mqtt_sources: Vec<MqttSourceConfig>,
    pub simulated_sources: Vec<SimulatedSourceConfig>,
    pub modbus_sources: Vec<ModbusSourceConfig>,
    pub models: Vec<ModelBindingConfig>,
    pub uplinks: Vec<UplinkConfig>,
    /// The files this config was read from, in merge order.
    pub files: Vec<PathBuf>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct GatewayConfig {
    pub id: String,
    pub state_dir: PathBuf,
    /// 0: one per CPU core.
    pub worker_threads: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct LogConfig {
    pub level: log::LevelFilter,
    /// `None` turns the periodic summary off.
    pub summary_interval: Option<Duration>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct StoreConfig {
    pub max_bytes: u64,
    pub full_policy: FullPolicy,
    pub durability: Durability,
    pub flush_interval: Duration,
    pub commit_batch: usize,
    pub commit_spacing: Duration,
    pub max_age: Option<Duration>,
    pub segment_size: Option<u64>,
    pub priority: PriorityRules,
}

impl StoreConfig {
    pub fn options(&self) -> crate::store::StoreOptions {
        crate::store::StoreOptions {
            max_bytes: self.max_bytes,
            policy: self.full_policy,
            max_age: self.max_age,
            segment_bytes: self.segment_size,
        }
    }
}

/// Which records go to the priority lane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PriorityRules {
    pub anomaly_events: bool,
    pub anomalous_samples: bool,
    pub devices: Vec<String>,
    pub fields: Vec<String>,
}

impl Default for PriorityRules {
    fn default() -> Self {
        PriorityRules {
            anomaly_events: true,
            anomalous_samples: false,
            devices: Vec::new(),
            fields: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct TlsConfig {
    pub ca_file: Option<PathBuf>,
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackoffConfig {
    pub min: Duration,
    pub max: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub struct MqttSourceConfig {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub tls: Option<TlsConfig>,
    pub keep_alive: Duration,
    pub connect_timeout: Duration,
    pub max_payload: usize,
    pub reconnect: BackoffConfig,
    pub inflight: u16,
    pub subscriptions: Vec<SubscriptionConfig>,
}

/// A model binding: which model scores which devices.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelBindingConfig {
    pub name: String,
    pub path: PathBuf,
    pub devices: Vec<String>,
    pub stride: usize,
    pub bad_values: crate::pipeline::window::BadValues,
    pub overrides: crate::pipeline::contract::Overrides,
}

/// A Modbus TCP endpoint or serial line, with its devices.
#[derive(Clone, Debug, PartialEq)]
pub struct ModbusSourceConfig {
    pub name: String,
    pub link: ModbusLink,
    pub devices: Vec<ModbusDeviceConfig>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ModbusLink {
    Tcp {
        host: String,
        port: u16,
        connect_timeout: Duration,
    },
    Rtu {
        device: PathBuf,
        baud: u32,
        parity: raw::Parity,
        data_bits: u8,
        stop_bits: u8,
        inter_request_delay: Duration,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModbusDeviceConfig {
    pub name: String,
    pub unit: u8,
    pub poll_interval: Duration,
    pub timeout: Duration,
    pub retries: u8,
    /// Shared: devices built from one profile hold one copy (a thousand meters would
    /// otherwise keep a thousand identical tables, several times over).
    pub points: std::sync::Arc<[crate::sources::modbus::plan::Point]>,
    /// The read plan: what one poll sends.
    pub requests: std::sync::Arc<[crate::sources::modbus::plan::ReadRequest]>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SimulatedSourceConfig {
    pub name: String,
    pub devices: usize,
    pub interval: Duration,
    pub seed: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SubscriptionConfig {
    pub filter: String,
    pub qos: u8,
    pub template: Option<TopicTemplate>,
    pub device_field: Option<String>,
    pub timestamp_field: Option<String>,
    pub timestamp_format: TimestampFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batching {
    pub max_records: usize,
    pub linger: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub struct UplinkConfig {
    pub name: String,
    pub batching: Batching,
    pub kind: UplinkKind,
}

#[derive(Clone, Debug, PartialEq)]
pub enum UplinkKind {
    /// Also InfluxDB, which is HTTP with another body.
    Http(Box<HttpUplinkConfig>),
    Mqtt(Box<MqttUplinkConfig>),
    File {
        path: PathBuf,
    },
    Stdout {
        format: StdoutFormat,
    },
}

impl UplinkKind {
    pub fn label(&self) -> &'static str {
        match self {
            UplinkKind::Http(h) if matches!(h.format, BodyFormat::InfluxLine { .. }) => "influxdb",
            UplinkKind::Http(_) => "http",
            UplinkKind::Mqtt(_) => "mqtt",
            UplinkKind::File { .. } => "file",
            UplinkKind::Stdout { .. } => "stdout",
        }
    }
}

/// What an HTTP uplink sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BodyFormat {
    /// tidegate's JSON batch (README, "The uplink body").
    Batch,
    /// InfluxDB line protocol; `measurement` may hold `{source}` and `{device}`.
    InfluxLine { measurement: String },
}

/// How an HTTP uplink authenticates.
#[derive(Clone, Debug, PartialEq)]
pub enum HttpAuth {
    None,
    /// `Authorization: Bearer <token>`.
    Bearer(Secret),
    /// `Authorization: Token <token>` (InfluxDB 2.x).
    Token(Secret),
    /// HTTP basic authentication (InfluxDB 1.x).
    Basic {
        username: String,
        password: Secret,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct MqttUplinkConfig {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub tls: Option<TlsConfig>,
    pub topic: String,
    pub keep_alive: Duration,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub inflight: u16,
    pub backoff: BackoffConfig,
}

#[derive(Clone, Debug, PartialEq)]
pub struct HttpUplinkConfig {
    pub url: reqwest::Url,
    pub auth: HttpAuth,
    pub format: BodyFormat,
    pub tls: TlsConfig,
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
    pub gzip: bool,
    pub backoff: BackoffConfig,
    pub retry_after_max: Duration,
}

fn fmt_duration(d: Duration) -> String {
    units::format_duration(d)
}

impl Config {
    /// The resolved plan, as `tidegate check` prints it. Secrets show as `<redacted>`.
    pub fn describe(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(out, "config files: {}", join_paths(&self.files));
        let _ = writeln!(
            out,
            "gateway {} (state in {})",
            self.gateway.id,
            self.gateway.state_dir.display()
        );
        let s = &self.store;
        let _ = writeln!(
            out,
            "store: max {} ({:?} when full), durability {:?}{}, up to {} samples per commit, commits at least {} apart",
            units::ByteSize(s.max_bytes),
            s.full_policy,
            s.durability,
            if s.durability == Durability::Interval {
                format!(" every {}", fmt_duration(s.flush_interval))
            } else {
                String::new()
            },
            s.commit_batch,
            fmt_duration(s.commit_spacing)
        );
        if let Some(age) = s.max_age {
            let _ = writeln!(
                out,
                "store: records older than {} (running time) are dropped",
                fmt_duration(age)
            );
        }
        let p = &s.priority;
        let mut lanes = Vec::new();
        if p.anomaly_events {
            lanes.push("anomaly events".to_string());
        }
        if p.anomalous_samples {
            lanes.push("anomalous samples".to_string());
        }
        if !p.devices.is_empty() {
            lanes.push(format!("devices {}", p.devices.join(", ")));
        }
        if !p.fields.is_empty() {
            lanes.push(format!("records with {} set", p.fields.join(", ")));
        }
        let _ = writeln!(
            out,
            "store: priority lane (sent first): {}",
            if lanes.is_empty() {
                "nothing".to_string()
            } else {
                lanes.join("; ")
            }
        );
        for m in &self.mqtt_sources {
            let _ = writeln!(
                out,
                "source mqtt \"{}\": {}{}:{} as {}{}{}",
                m.name,
                if m.tls.is_some() {
                    "mqtts://"
                } else {
                    "mqtt://"
                },
                m.host,
                m.port,
                m.client_id,
                m.username
                    .as_ref()
                    .map(|u| format!(", user {u}"))
                    .unwrap_or_default(),
                m.password
                    .as_ref()
                    .map(|p| format!(", password {p}"))
                    .unwrap_or_default(),
            );
            for sub in &m.subscriptions {
                let device = match (&sub.template, &sub.device_field) {
                    (Some(t), _) if t.has_device() => format!("device from topic {t}"),
                    (_, Some(field)) => format!("device from field \"{field}\""),
                    _ => "device = topic".to_string(),
                };
                let ts = sub
                    .timestamp_field
                    .as_ref()
                    .map(|f| format!("time from \"{f}\" ({:?})", sub.timestamp_format))
                    .unwrap_or_else(|| "time of receipt".into());
                let _ = writeln!(
                    out,
                    "  subscribe {} qos {}: {device}, {ts}",
                    sub.filter, sub.qos
                );
            }
        }
        for m in &self.modbus_sources {
            let link = match &m.link {
                ModbusLink::Tcp { host, port, .. } => {
                    format!("modbus_tcp \"{}\": {host}:{port}", m.name)
                }
                ModbusLink::Rtu {
                    device,
                    baud,
                    parity,
                    data_bits,
                    stop_bits,
                    inter_request_delay,
                } => format!(
                    "modbus_rtu \"{}\": {} {baud} baud {data_bits}{}{stop_bits}, {} between requests",
                    m.name,
                    device.display(),
                    match parity {
                        raw::Parity::None => "N",
                        raw::Parity::Even => "E",
                        raw::Parity::Odd => "O",
                    },
                    fmt_duration(*inter_request_delay)
                ),
            };
            let _ = writeln!(
                out,
                "source {link}, {}",
                units::plural(m.devices.len(), "device")
            );
            for d in &m.devices {
                let _ = writeln!(
                    out,
                    "  device \"{}\" unit {}: every {}, timeout {}, {}; {} in {} per poll",
                    d.name,
                    d.unit,
                    fmt_duration(d.poll_interval),
                    fmt_duration(d.timeout),
                    units::plural(usize::from(d.retries), "retry").replace("retrys", "retries"),
                    units::plural(d.points.len(), "point"),
                    units::plural(d.requests.len(), "read")
                );
                for r in d.requests.iter() {
                    let names: Vec<&str> = r.points.iter().map(|&i| &*d.points[i].name).collect();
                    let _ = writeln!(out, "    {r}: {}", names.join(", "));
                }
            }
        }
        for sim in &self.simulated_sources {
            let _ = writeln!(
                out,
                "source simulated \"{}\": {} pumps every {}",
                sim.name,
                sim.devices,
                fmt_duration(sim.interval)
            );
        }
        for m in &self.models {
            let _ = writeln!(
                out,
                "model \"{}\": {} for devices {}, scoring {}, bad values: {:?}",
                m.name,
                m.path.display(),
                m.devices.join(", "),
                if m.stride == 1 {
                    "every window".to_string()
                } else {
                    format!("one window in {}", m.stride)
                },
                m.bad_values
            );
        }
        for u in &self.uplinks {
            let batching = format!(
                "batches of up to {} records, linger {}",
                u.batching.max_records,
                fmt_duration(u.batching.linger)
            );
            let detail = match &u.kind {
                UplinkKind::Http(h) => format!(
                    "POST {}{}{}{}{}; timeout {}; retry {}..{}",
                    h.url,
                    match &h.format {
                        BodyFormat::Batch => String::new(),
                        BodyFormat::InfluxLine { measurement } =>
                            format!(" line protocol, measurement {measurement}"),
                    },
                    if h.gzip { " (gzip)" } else { "" },
                    match &h.auth {
                        HttpAuth::None => String::new(),
                        HttpAuth::Bearer(t) | HttpAuth::Token(t) => format!(", token {t}"),
                        HttpAuth::Basic { username, password } =>
                            format!(", user {username} password {password}"),
                    },
                    if h.tls.client_cert_file.is_some() {
                        ", client certificate"
                    } else {
                        ""
                    },
                    fmt_duration(h.timeout),
                    fmt_duration(h.backoff.min),
                    fmt_duration(h.backoff.max),
                ),
                UplinkKind::Mqtt(m) => format!(
                    "publish each record at QoS 1 to {}{}:{} topic {} as {}{}; in flight {}; PUBACK deadline {}; retry {}..{}",
                    if m.tls.is_some() {
                        "mqtts://"
                    } else {
                        "mqtt://"
                    },
                    m.host,
                    m.port,
                    m.topic,
                    m.client_id,
                    m.password
                        .as_ref()
                        .map(|p| format!(
                            ", user {} password {p}",
                            m.username.as_deref().unwrap_or("")
                        ))
                        .unwrap_or_default(),
                    m.inflight,
                    fmt_duration(m.timeout),
                    fmt_duration(m.backoff.min),
                    fmt_duration(m.backoff.max),
                ),
                UplinkKind::File { path } => format!("append NDJSON to {}", path.display()),
                UplinkKind::Stdout { format } => format!("print {format:?}"),
            };
            let _ = writeln!(
                out,
                "uplink {} \"{}\": {detail}; {batching}",
                u.kind.label(),
                u.name
            );
        }
        out
    }
}

fn join_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
