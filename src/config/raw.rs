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
    /// Threads running the async work. 0 (default): one per CPU core. A gateway polling
    /// many devices spends less CPU on thread wake-ups with 1 (measured: 1,000 Modbus
    /// devices at 1 s took 24% of a core with 2 threads, 15–18% with 1). At most 64.
    #[serde(default)]
    pub worker_threads: usize,
}

impl Default for RawGateway {
    fn default() -> Self {
        RawGateway {
            id: None,
            state_dir: default_state_dir(),
            worker_threads: 0,
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
    /// Shortest time between two commits: what arrives meanwhile shares the next flush.
    /// With a model, the pipeline gathers this long for one model run. An MQTT source
    /// whose window is full is committed at once. Default 25ms, between 0 and 1s.
    #[serde(default = "default_commit_spacing")]
    pub commit_spacing: HumanDuration,
    /// Drop records not delivered within this much running time of the gateway
    /// (counted, logged). Default: none, records wait until delivered or evicted.
    pub max_age: Option<HumanDuration>,
    /// Size of one segment file. Default: max_bytes / 16, between 64KiB and 16MiB.
    pub segment_size: Option<ByteSize>,
    /// Which records are sent before the backlog.
    #[serde(default)]
    pub priority: RawPriority,
}

impl Default for RawStore {
    fn default() -> Self {
        RawStore {
            max_bytes: default_max_bytes(),
            full_policy: default_full_policy(),
            durability: default_durability(),
            flush_interval: default_flush_interval(),
            commit_batch: default_commit_batch(),
            commit_spacing: default_commit_spacing(),
            max_age: None,
            segment_size: None,
            priority: RawPriority::default(),
        }
    }
}

/// `[store.priority]`: records that go to the priority lane, sent before the backlog
/// when an uplink comes back.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPriority {
    /// The model's anomaly_start / anomaly_end events. Default true.
    #[serde(default = "yes")]
    pub anomaly_events: bool,
    /// Every sample scored above its model's threshold. Default false.
    #[serde(default)]
    pub anomalous_samples: bool,
    /// Every record of these devices (names or patterns with * and ?).
    #[serde(default)]
    pub devices: Vec<String>,
    /// Records where any of these fields is true or non-zero (an alarm bit, say).
    #[serde(default)]
    pub fields: Vec<String>,
}

impl Default for RawPriority {
    fn default() -> Self {
        RawPriority {
            anomaly_events: true,
            anomalous_samples: false,
            devices: Vec::new(),
            fields: Vec::new(),
        }
    }
}

fn yes() -> bool {
    true
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

fn default_commit_spacing() -> HumanDuration {
    HumanDuration(std::time::Duration::from_millis(25))
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
    /// The broker's window: most QoS 1 messages it sends this client unacknowledged
    /// (mosquitto's `max_inflight_messages`). When that many wait on a commit, tidegate
    /// commits at once. Default 20 (mosquitto's default), 1..=65535.
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
    20
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
/// Short enough that a batch at a few thousand records a second goes out within a fifth
/// of a second; long enough that a quiet site sends a handful of requests a second, not
/// one per record.
fn default_linger() -> HumanDuration {
    HumanDuration(Duration::from_millis(150))
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

/// `[[uplinks.influxdb]]`: writes records as line protocol to InfluxDB 1.x (`database`)
/// or 2.x (`org` + `bucket`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInfluxUplink {
    pub name: String,
    /// The server, e.g. `http://127.0.0.1:8086` (the write path is added).
    pub url: String,
    /// 1.x: the database, and optionally its retention policy.
    pub database: Option<String>,
    pub retention_policy: Option<String>,
    /// 1.x: basic authentication.
    pub username: Option<String>,
    pub password: Option<SecretRef>,
    /// 2.x: organisation, bucket and API token.
    pub org: Option<String>,
    pub bucket: Option<String>,
    pub token: Option<SecretRef>,
    /// Measurement name; `{source}` and `{device}` are replaced. Default `{source}`.
    #[serde(default = "default_measurement")]
    pub measurement: String,
    #[serde(default)]
    pub tls: RawTls,
    #[serde(default = "default_http_timeout")]
    pub timeout: HumanDuration,
    #[serde(default = "default_true")]
    pub gzip: bool,
    /// Most records (lines) per write. Default 5000, InfluxDB's recommended batch size.
    #[serde(default = "default_influx_max_records")]
    pub max_records: usize,
    #[serde(default = "default_linger")]
    pub linger: HumanDuration,
    #[serde(default = "default_backoff_min")]
    pub backoff_min: HumanDuration,
    #[serde(default = "default_backoff_max")]
    pub backoff_max: HumanDuration,
    #[serde(default = "default_retry_after_max")]
    pub retry_after_max: HumanDuration,
}

fn default_measurement() -> String {
    "{source}".into()
}
fn default_influx_max_records() -> usize {
    5000
}

/// `[[uplinks.mqtt]]`: publishes each record to a (cloud) broker at QoS 1: AWS IoT Core,
/// Azure IoT Hub, an EMQX or HiveMQ cluster.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMqttUplink {
    pub name: String,
    pub host: String,
    /// Default 8883 with `tls`, 1883 without.
    pub port: Option<u16>,
    /// Default `tidegate-<gateway id>-<name>`.
    pub client_id: Option<String>,
    pub username: Option<String>,
    pub password: Option<SecretRef>,
    /// Enables TLS (and mutual TLS with a client certificate).
    pub tls: Option<RawTls>,
    /// Topic per record; `{gateway}`, `{source}` and `{device}` are replaced.
    /// Default `tidegate/{gateway}/{device}`.
    #[serde(default = "default_mqtt_topic")]
    pub topic: String,
    #[serde(default = "default_uplink_keep_alive")]
    pub keep_alive: HumanDuration,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: HumanDuration,
    /// Deadline for every record of a batch to be acknowledged (PUBACK). Default 30s.
    #[serde(default = "default_http_timeout")]
    pub timeout: HumanDuration,
    /// Publishes awaiting their PUBACK at once. Default 100, 1..=65535.
    #[serde(default = "default_uplink_inflight")]
    pub inflight: u16,
    #[serde(default = "default_max_records")]
    pub max_records: usize,
    #[serde(default = "default_linger")]
    pub linger: HumanDuration,
    #[serde(default = "default_backoff_min")]
    pub backoff_min: HumanDuration,
    #[serde(default = "default_backoff_max")]
    pub backoff_max: HumanDuration,
}

fn default_mqtt_topic() -> String {
    "tidegate/{gateway}/{device}".into()
}
fn default_uplink_keep_alive() -> HumanDuration {
    secs(30)
}
fn default_uplink_inflight() -> u16 {
    100
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

/// A register address as written: a 0-based integer, or the conventional 1-based string
/// notation (`"40001"` = holding register 0, `"30001"` = input register 0, `"10001"` =
/// discrete input 0, `"00001"` = coil 0; six digits such as `"400001"` also accepted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RawAddress {
    ZeroBased(i64),
    Notation(String),
}

impl<'de> Deserialize<'de> for RawAddress {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = RawAddress;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a 0-based address (integer) or a notation string such as \"40001\"")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RawAddress, E> {
                Ok(RawAddress::ZeroBased(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RawAddress, E> {
                Ok(RawAddress::ZeroBased(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawAddress, E> {
                Ok(RawAddress::Notation(v.to_string()))
            }
        }
        deserializer.deserialize_any(V)
    }
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RawTable {
    Holding,
    Input,
    Coil,
    Discrete,
}

/// One value of a Modbus device.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPoint {
    /// Field name in the sample.
    pub name: String,
    /// holding | input | coil | discrete. May be left out with the "40001" notation.
    pub table: Option<RawTable>,
    pub address: RawAddress,
    /// bool | u16 | i16 | u32 | i32 | u64 | i64 | f32 | f64 | string. Default: u16 for
    /// registers, bool for coils and discrete inputs.
    #[serde(rename = "type")]
    pub data_type: Option<crate::sources::modbus::decode::DataType>,
    /// ABCD (default) | CDAB | BADC | DCBA; defaults to the device's `byte_order`.
    pub byte_order: Option<crate::sources::modbus::decode::ByteOrder>,
    /// For `bool` read from a register: the bit, 0 (least significant) to 15.
    pub bit: Option<u8>,
    /// Registers of a `string` (2 characters each), 1 to 125.
    pub length: Option<u16>,
    /// value × scale + offset. Defaults 1 and 0.
    #[serde(default = "one")]
    pub scale: f64,
    #[serde(default)]
    pub offset: f64,
    /// Unit of measure, for people (shown by `tidegate check`).
    pub unit: Option<String>,
}

fn one() -> f64 {
    1.0
}

/// `[profiles.<name>]`: a register map shared by every device of one kind.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProfile {
    pub points: Vec<RawPoint>,
}

/// A device (unit id) on a Modbus TCP endpoint or serial line.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModbusDevice {
    pub name: String,
    /// Unit (slave) id: 1..=247 on a serial line; 0..=255 on TCP (default 1).
    #[serde(default = "default_unit")]
    pub unit: u8,
    /// Default 1s, between 10ms and 1h.
    #[serde(default = "default_poll_interval")]
    pub poll_interval: HumanDuration,
    /// Deadline of one request. Default 1s, between 10ms and 60s.
    #[serde(default = "default_modbus_timeout")]
    pub timeout: HumanDuration,
    /// Extra attempts after a timeout within one poll. Default 0, at most 5.
    #[serde(default)]
    pub retries: u8,
    /// Largest gap (registers or bits) bridged to merge two reads into one. Default 0:
    /// unmapped addresses in a gap make some devices answer with an exception.
    #[serde(default)]
    pub max_gap: u16,
    /// Per-request limits for devices that accept less than the protocol's 125 / 2000.
    #[serde(default = "default_max_registers")]
    pub max_registers_per_read: u16,
    #[serde(default = "default_max_bits")]
    pub max_bits_per_read: u16,
    /// Default byte order of the device's multi-register values.
    #[serde(default)]
    pub byte_order: crate::sources::modbus::decode::ByteOrder,
    /// Name of a `[profiles.<name>]` register map; its points come before `points`.
    pub profile: Option<String>,
    #[serde(default)]
    pub points: Vec<RawPoint>,
}

fn default_unit() -> u8 {
    1
}
fn default_poll_interval() -> HumanDuration {
    secs(1)
}
fn default_modbus_timeout() -> HumanDuration {
    secs(1)
}
fn default_max_registers() -> u16 {
    125
}
fn default_max_bits() -> u16 {
    2000
}

/// `[[sources.modbus_tcp]]`: one TCP endpoint (a PLC, or a TCP→RTU gateway with many units).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModbusTcp {
    pub name: String,
    pub host: String,
    #[serde(default = "default_modbus_port")]
    pub port: u16,
    /// Deadline of the TCP connect. Default 3s.
    #[serde(default = "default_modbus_connect_timeout")]
    pub connect_timeout: HumanDuration,
    pub devices: Vec<RawModbusDevice>,
}

fn default_modbus_port() -> u16 {
    502
}
fn default_modbus_connect_timeout() -> HumanDuration {
    secs(3)
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Parity {
    None,
    /// The Modbus standard's default.
    #[default]
    Even,
    Odd,
}

/// `[[sources.modbus_rtu]]`: one RS-485 line; its devices are polled one request at a time.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModbusRtu {
    pub name: String,
    /// Serial device, e.g. `/dev/ttyUSB0` or `/dev/ttyAMA0`.
    pub device: PathBuf,
    /// Default 19200.
    #[serde(default = "default_baud")]
    pub baud: u32,
    /// none | even (default, as the standard says) | odd.
    #[serde(default)]
    pub parity: Parity,
    /// 7 or 8 (default).
    #[serde(default = "default_data_bits")]
    pub data_bits: u8,
    /// 1 (default) or 2.
    #[serde(default = "default_stop_bits")]
    pub stop_bits: u8,
    /// Pause between requests. Default: 3.5 character times at the baud rate (1.75 ms
    /// above 19200 baud), as the standard requires.
    pub inter_request_delay: Option<HumanDuration>,
    pub devices: Vec<RawModbusDevice>,
}

fn default_baud() -> u32 {
    19_200
}
fn default_data_bits() -> u8 {
    8
}
fn default_stop_bits() -> u8 {
    1
}

/// `[[models]]`: an ONNX model and the devices it scores.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    /// Name of the binding (logs, `check`).
    pub name: String,
    /// The ONNX file. Relative paths are taken from this config file's directory.
    pub path: PathBuf,
    /// Device names or patterns (`*` any run of characters, `?` one). Default: all.
    #[serde(default = "all_devices")]
    pub devices: Vec<String>,
    /// Score every `stride`-th window. Default 1 (every sample once the window is full).
    #[serde(default = "one_usize")]
    pub stride: usize,
    /// skip (default) | hold | reset: what a sample with a bad or missing channel does.
    #[serde(default)]
    pub bad_values: crate::pipeline::window::BadValues,
    /// Overrides of the model's own contract (its ONNX metadata).
    pub channels: Option<Vec<String>>,
    pub window: Option<usize>,
    pub mean: Option<Vec<f64>>,
    pub std: Option<Vec<f64>>,
    pub threshold: Option<f64>,
    /// "output:<name>" or "reconstruction_mse:<name>".
    pub score: Option<String>,
}

fn all_devices() -> Vec<String> {
    vec!["*".to_string()]
}
fn one_usize() -> usize {
    1
}
