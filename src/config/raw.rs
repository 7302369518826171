//! The config as written: plain serde types, `deny_unknown_fields` everywhere so a typo is
//! an error, defaults filled in here. Range and cross-field checks live in `validate`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::secret::SecretRef;
use super::units::{ByteSize, HumanDuration};

fn secs(s: u64) -> HumanDuration {
    HumanDuration(Duration::from_secs(s))
}
fn millis(ms: u64) -> HumanDuration {
    HumanDuration(Duration::from_millis(ms))
}

/// `[gateway]`: who this gateway is and where it keeps its state.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGateway {
    /// Identifies this gateway to the backend (body field `gateway`, idempotency keys).
    /// Default: the host name.
    pub id: Option<String>,
    /// Directory for the durable store. Default `/var/lib/tidegate`.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
}

impl Default for RawGateway {
    fn default() -> Self {
        RawGateway {
            id: None,
            state_dir: default_state_dir(),
        }
    }
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/tidegate")
}

/// `[log]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    /// error | warn | info | debug | trace. `TIDEGATE_LOG` in the environment overrides.
    #[serde(default = "default_level")]
    pub level: String,
    /// How often the one-line summary is logged. `"0s"` turns it off.
    #[serde(default = "default_summary")]
    pub summary_interval: HumanDuration,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            level: default_level(),
            summary_interval: default_summary(),
        }
    }
}

fn default_level() -> String {
    "info".into()
}
fn default_summary() -> HumanDuration {
    secs(60)
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FullPolicy {
    /// Evict the oldest records to make room; every eviction is counted and logged.
    DropOldest,
    /// Stop accepting: MQTT stops acknowledging (the broker holds the messages).
    Block,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// Every commit is flushed to disk before the source is acknowledged.
    Fsync,
    /// Commits are flushed every `flush_interval`; a power cut can lose that window.
    Interval,
}

/// `[store]`: the durable buffer between sources and uplinks.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    /// Upper bound of buffered record bytes. Default 512MiB, at least 1MiB.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: ByteSize,
    /// What happens when `max_bytes` is reached: drop_oldest (default) | block.
    #[serde(default = "default_full_policy")]
    pub full_policy: FullPolicy,
    /// fsync (default) | interval.
    #[serde(default = "default_durability")]
    pub durability: Durability,
    /// Flush period in `interval` mode. Default 1s, between 10ms and 60s.
    #[serde(default = "default_flush_interval")]
    pub flush_interval: HumanDuration,
    /// Most samples committed with one flush (group commit). Default 2048, 1..=65536.
    #[serde(default = "default_commit_batch")]
    pub commit_batch: usize,
}

impl Default for RawStore {
    fn default() -> Self {
        RawStore {
            max_bytes: default_max_bytes(),
            full_policy: default_full_policy(),
            durability: default_durability(),
            flush_interval: default_flush_interval(),
            commit_batch: default_commit_batch(),
        }
    }
}

fn default_max_bytes() -> ByteSize {
    ByteSize(512 << 20)
}
fn default_full_policy() -> FullPolicy {
    FullPolicy::DropOldest
}
fn default_durability() -> Durability {
    Durability::Fsync
}
fn default_flush_interval() -> HumanDuration {
    secs(1)
}
fn default_commit_batch() -> usize {
    2048
}

/// TLS settings shared by the MQTT source and the HTTP uplink. Server certificates are
/// always verified: against the system roots, or `ca_file` when given.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// PEM bundle of CA certificates to trust instead of the system roots.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain for mutual TLS (needs `client_key_file`).
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of the client certificate.
    pub client_key_file: Option<PathBuf>,
}

/// `[[sources.mqtt]]`: a local broker to subscribe to.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMqttSource {
    /// Unique name of this source (logs, the `source` field of records).
    pub name: String,
    #[serde(default = "default_mqtt_host")]
    pub host: String,
    /// Default 1883, or 8883 when `tls` is set.
    pub port: Option<u16>,
    /// Default `tidegate-<gateway id>-<name>`. Must be stable: the broker keeps the
    /// persistent session (and the unacknowledged messages) under it.
    pub client_id: Option<String>,
    pub username: Option<String>,
    pub password: Option<SecretRef>,
    /// Enables TLS to the broker.
    pub tls: Option<RawTls>,
    /// MQTT keep-alive. Default 30s, between 5s and 65535s.
    #[serde(default = "default_keep_alive")]
    pub keep_alive: HumanDuration,
    /// Deadline for the TCP/TLS connect and the CONNACK. Default 10s.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: HumanDuration,
    /// Largest accepted payload; larger messages are counted as oversize and skipped.
    /// Default 256KiB, at most 16MiB.
    #[serde(default = "default_max_payload")]
    pub max_payload: ByteSize,
    /// Reconnect back-off bounds. Defaults 500ms and 30s.
    #[serde(default = "default_reconnect_min")]
    pub reconnect_min: HumanDuration,
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max: HumanDuration,
    /// Most QoS 1 messages held between receipt and commit. Default 100, 1..=65535.
    #[serde(default = "default_inflight")]
    pub inflight: u16,
    pub subscriptions: Vec<RawSubscription>,
}

fn default_mqtt_host() -> String {
    "127.0.0.1".into()
}
fn default_keep_alive() -> HumanDuration {
    secs(30)
}
fn default_connect_timeout() -> HumanDuration {
    secs(10)
}
fn default_max_payload() -> ByteSize {
    ByteSize(256 << 10)
}
fn default_reconnect_min() -> HumanDuration {
    millis(500)
}
fn default_reconnect_max() -> HumanDuration {
    secs(30)
}
fn default_inflight() -> u16 {
    100
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TimestampFormat {
    /// Numbers are epoch seconds, milliseconds or microseconds judged by magnitude;
    /// strings are RFC 3339.
    #[default]
    Auto,
    EpochS,
    EpochMs,
    EpochUs,
    Rfc3339,
}

/// `[[sources.mqtt.subscriptions]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSubscription {
    /// MQTT topic filter, e.g. `plant/+/+/telemetry`.
    pub filter: String,
    /// 1 (default; acknowledged only after commit) or 0 (at most once).
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// Template matched against the topic; `{name}` segments become fields, and
    /// `{device}` names the device. E.g. `plant/{line}/{device}/telemetry`.
    pub topic_template: Option<String>,
    /// Payload field holding the device id (used when the template has no `{device}`).
    pub device_field: Option<String>,
    /// Payload field holding the sample time. Absent: the time of receipt.
    pub timestamp_field: Option<String>,
    /// auto (default) | epoch_s | epoch_ms | epoch_us | rfc3339.
    #[serde(default)]
    pub timestamp_format: TimestampFormat,
}

fn default_qos() -> u8 {
    1
}

fn default_max_records() -> usize {
    500
}
fn default_linger() -> HumanDuration {
    secs(1)
}

/// `[[uplinks.http]]`: a backend receiving gzip JSON batches by POST.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttpUplink {
    pub name: String,
    /// `https://…` (or `http://` for a backend on loopback).
    pub url: String,
    /// Bearer token, sent as `Authorization: Bearer …`.
    pub token: Option<SecretRef>,
    #[serde(default)]
    pub tls: RawTls,
    /// Extra request headers (not secrets: they are printed by `check`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Deadline for one request, connect to last byte. Default 30s.
    #[serde(default = "default_http_timeout")]
    pub timeout: HumanDuration,
    /// Compress bodies with gzip. Default true.
    #[serde(default = "default_true")]
    pub gzip: bool,
    /// Most records per batch. Default 500, 1..=100000.
    #[serde(default = "default_max_records")]
    pub max_records: usize,
    /// How long a partial batch may wait for more records. Default 1s, at most 10m.
    #[serde(default = "default_linger")]
    pub linger: HumanDuration,
    /// Retry back-off bounds. Defaults 1s and 60s.
    #[serde(default = "default_backoff_min")]
    pub backoff_min: HumanDuration,
    #[serde(default = "default_backoff_max")]
    pub backoff_max: HumanDuration,
    /// Longest `Retry-After` honoured; longer requests are clamped. Default 10m.
    #[serde(default = "default_retry_after_max")]
    pub retry_after_max: HumanDuration,
}

fn default_http_timeout() -> HumanDuration {
    secs(30)
}
fn default_true() -> bool {
    true
}
fn default_backoff_min() -> HumanDuration {
    secs(1)
}
fn default_backoff_max() -> HumanDuration {
    secs(60)
}
fn default_retry_after_max() -> HumanDuration {
    secs(600)
}

/// `[[uplinks.file]]`: appends records as NDJSON to a local file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFileUplink {
    pub name: String,
    pub path: PathBuf,
    /// Most records per batch. Default 500, 1..=100000.
    #[serde(default = "default_max_records")]
    pub max_records: usize,
    /// How long a partial batch may wait for more records. Default 1s, at most 10m.
    #[serde(default = "default_linger")]
    pub linger: HumanDuration,
}

/// `[[uplinks.stdout]]`: prints records, for commissioning and debugging.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStdoutUplink {
    pub name: String,
    /// json (one NDJSON line per record, default) | text (one readable line per record).
    #[serde(default)]
    pub format: StdoutFormat,
    /// Most records per batch. Default 500, 1..=100000.
    #[serde(default = "default_max_records")]
    pub max_records: usize,
    /// How long a partial batch may wait for more records. Default 1s, at most 10m.
    #[serde(default = "default_linger")]
    pub linger: HumanDuration,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StdoutFormat {
    #[default]
    Json,
    Text,
}

/// `[[sources.simulated]]`: a simulated plant (pumps with drifting values and occasional
/// faults). For the demo and for commissioning an uplink before field devices are wired.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSimulatedSource {
    pub name: String,
    /// Number of simulated pumps. Default 4, 1..=10000.
    #[serde(default = "default_sim_devices")]
    pub devices: usize,
    /// Time between samples of each pump. Default 1s, between 10ms and 1h.
    #[serde(default = "default_sim_interval")]
    pub interval: HumanDuration,
    /// Random seed, for repeatable runs.
    #[serde(default)]
    pub seed: u64,
}

fn default_sim_devices() -> usize {
    4
}
fn default_sim_interval() -> HumanDuration {
    secs(1)
}
