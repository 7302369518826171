//! Pure validation: the merged document in, a typed [`Config`] or *every* problem out,
//! each with its key path (and through the document, its file and line). The only
//! outside facts it needs — secrets, file existence, the host name — come through the
//! [`Environment`] trait, so tests run it without touching the machine.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use toml::Value;

use super::files::{ConfigDocument, Diagnostic, join_index, join_key};
use super::raw::*;
use super::secret::{self, Secret, SecretRef};
use super::sections::{batching, http_uplink, model_binding, mqtt_source};
use super::*;

/// What validation needs to know about the machine.
pub trait Environment {
    fn load_secret(&self, secret: &SecretRef) -> Result<Secret, String>;
    fn check_readable(&self, path: &Path) -> Result<(), String>;
    fn hostname(&self) -> String;
}

/// The real machine: files on disk, `$CREDENTIALS_DIRECTORY`, the kernel's host name.
pub struct SystemEnvironment;

impl Environment for SystemEnvironment {
    fn load_secret(&self, secret: &SecretRef) -> Result<Secret, String> {
        let dir = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
        secret::load(secret, dir.as_deref())
    }

    fn check_readable(&self, path: &Path) -> Result<(), String> {
        std::fs::File::open(path)
            .map(|_| ())
            .map_err(|e| format!("cannot read {}: {e}", path.display()))
    }

    fn hostname(&self) -> String {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "tidegate".to_string())
    }
}

pub(super) struct Checker<'a> {
    doc: &'a ConfigDocument,
    env: &'a dyn Environment,
    errors: Vec<Diagnostic>,
}

impl Checker<'_> {
    pub(super) fn doc(&self) -> &ConfigDocument {
        self.doc
    }

    pub(super) fn error_count(&self) -> usize {
        self.errors.len()
    }

    pub(super) fn error(&mut self, key_path: &str, message: impl Into<String>) {
        let d = self.doc.diagnostic(key_path, message);
        self.errors.push(d);
    }

    /// Deserialises one section, reporting a failure with its full key path. serde stops
    /// at the first error; to report more than one per section, the offending key is
    /// taken out and the section tried again, until it parses or an error cannot be
    /// attributed to a removable key.
    pub(super) fn section<T: DeserializeOwned>(
        &mut self,
        value: &Value,
        prefix: &str,
    ) -> Option<T> {
        let mut value = value.clone();
        let mut removed: Vec<String> = Vec::new();
        for _ in 0..64 {
            let err = match serde_path_to_error::deserialize::<_, T>(value.clone()) {
                // Even after errors, the rest of the section is checked: defaults stand in
                // for what was taken out, and they are valid by construction.
                Ok(parsed) => return Some(parsed),
                Err(err) => err,
            };
            let segments: Vec<serde_path_to_error::Segment> = err.path().iter().cloned().collect();
            let mut path = prefix.to_string();
            for segment in &segments {
                match segment {
                    serde_path_to_error::Segment::Seq { index } => path = join_index(&path, *index),
                    serde_path_to_error::Segment::Map { key } => path = join_key(&path, key),
                    serde_path_to_error::Segment::Enum { variant } => {
                        path = join_key(&path, variant)
                    }
                    serde_path_to_error::Segment::Unknown => {}
                }
            }
            let message = plain_type_names(err.into_inner().message());
            // A "missing field" that we caused by taking out a bad value is not news.
            if let Some(field) = missing_field_name(&message)
                && removed.contains(&join_key(&path, field))
            {
                return None;
            }
            self.error(&path, message);
            if !remove_at(&mut value, &segments) {
                return None;
            }
            removed.push(path);
        }
        None
    }

    pub(super) fn table_keys(&mut self, value: &Value, prefix: &str, allowed: &[&str]) {
        match value.as_table() {
            Some(table) => {
                for key in table.keys() {
                    if !allowed.contains(&key.as_str()) {
                        self.error(
                            &join_key(prefix, key),
                            format!(
                                "unknown key `{key}`, expected one of: {}",
                                allowed.join(", ")
                            ),
                        );
                    }
                }
            }
            None => self.error(prefix, "expected a table"),
        }
    }

    /// Items of an array of tables such as `[[uplinks.http]]`.
    pub(super) fn array_items<'v>(
        &mut self,
        value: &'v Value,
        prefix: &str,
    ) -> Vec<(String, &'v Value)> {
        match value.as_array() {
            Some(items) => items
                .iter()
                .enumerate()
                .map(|(i, v)| (join_index(prefix, i), v))
                .collect(),
            None => {
                self.error(
                    prefix,
                    format!("expected an array of tables: write [[{prefix}]]"),
                );
                Vec::new()
            }
        }
    }

    pub(super) fn range_duration(
        &mut self,
        path: &str,
        value: Duration,
        min: Duration,
        max: Duration,
    ) {
        if value < min || value > max {
            self.error(
                path,
                format!(
                    "{} is out of range: must be between {} and {}",
                    units::format_duration(value),
                    units::format_duration(min),
                    units::format_duration(max)
                ),
            );
        }
    }

    pub(super) fn range_usize(&mut self, path: &str, value: usize, min: usize, max: usize) {
        if value < min || value > max {
            self.error(
                path,
                format!("{value} is out of range: must be between {min} and {max}"),
            );
        }
    }

    /// Relative paths are taken from the directory of the file that wrote them, not from
    /// wherever the daemon happens to be started.
    pub(super) fn resolve(&self, key_path: &str, path: &Path) -> PathBuf {
        if path.is_absolute() {
            return path.to_path_buf();
        }
        match self
            .doc
            .locate(key_path)
            .and_then(|l| l.file.parent().map(Path::to_path_buf))
        {
            Some(dir) => dir.join(path),
            None => path.to_path_buf(),
        }
    }

    pub(super) fn secret(&mut self, path: &str, reference: Option<&SecretRef>) -> Option<Secret> {
        let mut reference = reference?.clone();
        if let Some(file) = &reference.file {
            reference.file = Some(self.resolve(path, file));
        }
        let reference = &reference;
        if let Err(e) = secret::check_ref(reference) {
            self.error(path, e);
            return None;
        }
        match self.env.load_secret(reference) {
            Ok(s) => Some(s),
            Err(e) => {
                self.error(path, e);
                None
            }
        }
    }

    pub(super) fn tls(&mut self, path: &str, raw: &RawTls) -> TlsConfig {
        let resolve = |key: &str, file: &Option<PathBuf>| {
            file.as_ref().map(|f| self.resolve(&join_key(path, key), f))
        };
        let raw = &RawTls {
            ca_file: resolve("ca_file", &raw.ca_file),
            client_cert_file: resolve("client_cert_file", &raw.client_cert_file),
            client_key_file: resolve("client_key_file", &raw.client_key_file),
        };
        for (key, file) in [
            ("ca_file", &raw.ca_file),
            ("client_cert_file", &raw.client_cert_file),
            ("client_key_file", &raw.client_key_file),
        ] {
            if let Some(file) = file
                && let Err(e) = self.env.check_readable(file)
            {
                self.error(&join_key(path, key), e);
            }
        }
        if raw.client_cert_file.is_some() != raw.client_key_file.is_some() {
            self.error(
                path,
                "client_cert_file and client_key_file must be given together",
            );
        }
        TlsConfig {
            ca_file: raw.ca_file.clone(),
            client_cert_file: raw.client_cert_file.clone(),
            client_key_file: raw.client_key_file.clone(),
        }
    }

    pub(super) fn name(&mut self, path: &str, name: &str, seen: &mut HashSet<String>) {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            self.error(
                path,
                format!("name \"{name}\" must be non-empty and use only letters, digits, '-', '_' and '.'"),
            );
        } else if !seen.insert(name.to_string()) {
            self.error(path, format!("name \"{name}\" is used twice"));
        }
    }
}

/// serde names our Rust types ("expected struct RawStore"); the operator wrote a table.
fn plain_type_names(message: &str) -> String {
    match message.find("expected struct ") {
        Some(start) => {
            let rest = &message[start + "expected struct ".len()..];
            let end = rest
                .find(|c: char| !c.is_alphanumeric())
                .unwrap_or(rest.len());
            format!("{}expected a table{}", &message[..start], &rest[end..])
        }
        None => message.to_string(),
    }
}

fn missing_field_name(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("missing field `")?;
    rest.split('`').next()
}

/// Removes the value at `segments` (relative to `value`). False if there is none.
fn remove_at(value: &mut Value, segments: &[serde_path_to_error::Segment]) -> bool {
    use serde_path_to_error::Segment;
    let Some((last, parents)) = segments.split_last() else {
        return false;
    };
    let mut current = value;
    for segment in parents {
        current = match (segment, current) {
            (Segment::Map { key }, Value::Table(t)) => match t.get_mut(key) {
                Some(v) => v,
                None => return false,
            },
            (Segment::Seq { index }, Value::Array(a)) => match a.get_mut(*index) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    match (last, current) {
        (Segment::Map { key }, Value::Table(t)) => t.remove(key).is_some(),
        // Removing an array element would shift the indices of later errors.
        _ => false,
    }
}

/// Validates the merged document. Returns every problem found, not just the first.
pub fn validate(doc: &ConfigDocument, env: &dyn Environment) -> Result<Config, Vec<Diagnostic>> {
    let mut c = Checker {
        doc,
        env,
        errors: Vec::new(),
    };
    let root = Value::Table(doc.merged.clone());
    c.table_keys(
        &root,
        "",
        &[
            "gateway", "log", "store", "sources", "profiles", "models", "uplinks",
        ],
    );
    let empty = Value::Table(Default::default());
    let get = |key: &str| doc.merged.get(key).unwrap_or(&empty);

    let raw_gateway: RawGateway = c.section(get("gateway"), "gateway").unwrap_or_default();
    let gateway_id = raw_gateway.id.clone().unwrap_or_else(|| env.hostname());
    if gateway_id.is_empty() || gateway_id.chars().any(|ch| ch.is_control() || ch == ':') {
        c.error(
            "gateway.id",
            format!("\"{gateway_id}\" must be non-empty, without ':' or control characters"),
        );
    }
    c.range_usize("gateway.worker_threads", raw_gateway.worker_threads, 0, 64);
    if !raw_gateway.state_dir.is_absolute() {
        c.error(
            "gateway.state_dir",
            format!(
                "\"{}\" must be an absolute path",
                raw_gateway.state_dir.display()
            ),
        );
    }

    let raw_log: RawLog = c.section(get("log"), "log").unwrap_or_default();
    let level = match raw_log.level.parse::<log::LevelFilter>() {
        Ok(level) => level,
        Err(_) => {
            c.error(
                "log.level",
                format!(
                    "\"{}\" is not a level: use error, warn, info, debug or trace",
                    raw_log.level
                ),
            );
            log::LevelFilter::Info
        }
    };
    let summary = raw_log.summary_interval.0;
    if !summary.is_zero() {
        c.range_duration(
            "log.summary_interval",
            summary,
            Duration::from_secs(1),
            Duration::from_secs(86_400),
        );
    }

    let raw_store: RawStore = c.section(get("store"), "store").unwrap_or_default();
    if raw_store.max_bytes.bytes() < (1 << 20) {
        c.error(
            "store.max_bytes",
            format!("{} is below the minimum of 1MiB", raw_store.max_bytes),
        );
    }
    c.range_duration(
        "store.flush_interval",
        raw_store.flush_interval.0,
        Duration::from_millis(10),
        Duration::from_secs(60),
    );
    c.range_usize("store.commit_batch", raw_store.commit_batch, 1, 65_536);
    c.range_duration(
        "store.commit_spacing",
        raw_store.commit_spacing.0,
        Duration::ZERO,
        Duration::from_secs(1),
    );
    if let Some(age) = &raw_store.max_age {
        c.range_duration(
            "store.max_age",
            age.0,
            Duration::from_secs(60),
            Duration::from_secs(315_576_000),
        );
    }
    if let Some(size) = raw_store.segment_size
        && !((64 << 10)..=(1 << 30)).contains(&size.bytes())
    {
        c.error(
            "store.segment_size",
            format!("{size} is outside 64KiB..=1GiB"),
        );
    }
    for (i, pattern) in raw_store.priority.devices.iter().enumerate() {
        if pattern.is_empty() {
            c.error(
                &format!("store.priority.devices[{i}]"),
                "an empty pattern matches no device",
            );
        }
    }

    let mut mqtt_sources = Vec::new();
    let mut source_names = HashSet::new();
    if let Some(sources) = doc.merged.get("sources") {
        c.table_keys(
            sources,
            "sources",
            &["mqtt", "modbus_tcp", "modbus_rtu", "simulated"],
        );
        if let Some(mqtt) = sources.get("mqtt") {
            for (path, item) in c.array_items(mqtt, "sources.mqtt") {
                if let Some(raw) = c.section::<RawMqttSource>(item, &path) {
                    mqtt_sources.push(mqtt_source(
                        &mut c,
                        &path,
                        raw,
                        &gateway_id,
                        &mut source_names,
                    ));
                }
            }
        }
    }

    let mut simulated_sources = Vec::new();
    if let Some(list) = doc.merged.get("sources").and_then(|s| s.get("simulated")) {
        for (path, item) in c.array_items(list, "sources.simulated") {
            if let Some(raw) = c.section::<RawSimulatedSource>(item, &path) {
                c.name(&join_key(&path, "name"), &raw.name, &mut source_names);
                c.range_usize(&join_key(&path, "devices"), raw.devices, 1, 10_000);
                c.range_duration(
                    &join_key(&path, "interval"),
                    raw.interval.0,
                    Duration::from_millis(10),
                    Duration::from_secs(3600),
                );
                simulated_sources.push(SimulatedSourceConfig {
                    name: raw.name,
                    devices: raw.devices,
                    interval: raw.interval.0,
                    seed: raw.seed,
                });
            }
        }
    }

    let mut device_names = HashSet::new();
    let modbus_sources = super::modbus::sources(&mut c, &mut source_names, &mut device_names);

    let mut models = Vec::new();
    let mut model_names = HashSet::new();
    if let Some(list) = doc.merged.get("models") {
        for (path, item) in c.array_items(list, "models") {
            if let Some(raw) = c.section::<RawModel>(item, &path) {
                models.push(model_binding(&mut c, &path, raw, &mut model_names));
            }
        }
    }

    let mut uplinks = Vec::new();
    let mut uplink_names = HashSet::new();
    if let Some(section) = doc.merged.get("uplinks") {
        c.table_keys(
            section,
            "uplinks",
            &["http", "influxdb", "mqtt", "file", "stdout"],
        );
        if let Some(list) = section.get("http") {
            for (path, item) in c.array_items(list, "uplinks.http") {
                if let Some(raw) = c.section::<RawHttpUplink>(item, &path) {
                    uplinks.push(http_uplink(&mut c, &path, raw, &mut uplink_names));
                }
            }
        }
        if let Some(list) = section.get("influxdb") {
            for (path, item) in c.array_items(list, "uplinks.influxdb") {
                if let Some(raw) = c.section::<RawInfluxUplink>(item, &path) {
                    uplinks.push(super::sections::influx_uplink(
                        &mut c,
                        &path,
                        raw,
                        &mut uplink_names,
                    ));
                }
            }
        }
        if let Some(list) = section.get("mqtt") {
            for (path, item) in c.array_items(list, "uplinks.mqtt") {
                if let Some(raw) = c.section::<RawMqttUplink>(item, &path) {
                    uplinks.push(super::sections::mqtt_uplink(
                        &mut c,
                        &path,
                        raw,
                        &gateway_id,
                        &mut uplink_names,
                    ));
                }
            }
        }
        if let Some(list) = section.get("file") {
            for (path, item) in c.array_items(list, "uplinks.file") {
                if let Some(raw) = c.section::<RawFileUplink>(item, &path) {
                    c.name(&join_key(&path, "name"), &raw.name, &mut uplink_names);
                    let batching = batching(&mut c, &path, raw.max_records, raw.linger.0);
                    let file_path = c.resolve(&join_key(&path, "path"), &raw.path);
                    if raw.path.as_os_str().is_empty() {
                        c.error(&join_key(&path, "path"), "must not be empty");
                    }
                    uplinks.push(UplinkConfig {
                        name: raw.name,
                        batching,
                        kind: UplinkKind::File { path: file_path },
                    });
                }
            }
        }
        if let Some(list) = section.get("stdout") {
            for (path, item) in c.array_items(list, "uplinks.stdout") {
                if let Some(raw) = c.section::<RawStdoutUplink>(item, &path) {
                    c.name(&join_key(&path, "name"), &raw.name, &mut uplink_names);
                    let batching = batching(&mut c, &path, raw.max_records, raw.linger.0);
                    uplinks.push(UplinkConfig {
                        name: raw.name,
                        batching,
                        kind: UplinkKind::Stdout { format: raw.format },
                    });
                }
            }
        }
    }

    if c.errors.is_empty() {
        if mqtt_sources.is_empty() && simulated_sources.is_empty() && modbus_sources.is_empty() {
            c.error(
                "sources",
                "no sources configured: add [[sources.mqtt]], [[sources.modbus_tcp]] or [[sources.modbus_rtu]]",
            );
        }
        if uplinks.is_empty() {
            c.error(
                "uplinks",
                "no uplinks configured: add [[uplinks.http]], [[uplinks.mqtt]], [[uplinks.influxdb]], [[uplinks.file]] or [[uplinks.stdout]] \
                 (without one the store only fills up)",
            );
        }
    }

    if !c.errors.is_empty() {
        // In reading order: files in merge order, then line and column.
        let order: Vec<&Path> = doc.file_paths().collect();
        let mut errors = c.errors;
        // A profile shared by several devices would report its own mistakes once each.
        let mut seen = HashSet::new();
        errors.retain(|d| seen.insert(d.to_string()));
        errors.sort_by_key(|d| match &d.location {
            Some(l) => (
                order
                    .iter()
                    .position(|p| *p == l.file.as_path())
                    .unwrap_or(usize::MAX),
                l.line,
                l.column,
            ),
            None => (usize::MAX, 0, 0),
        });
        return Err(errors);
    }
    Ok(Config {
        gateway: GatewayConfig {
            id: gateway_id,
            state_dir: raw_gateway.state_dir,
            worker_threads: raw_gateway.worker_threads,
        },
        log: LogConfig {
            level,
            summary_interval: (!summary.is_zero()).then_some(summary),
        },
        store: StoreConfig {
            max_bytes: raw_store.max_bytes.bytes(),
            full_policy: raw_store.full_policy,
            durability: raw_store.durability,
            flush_interval: raw_store.flush_interval.0,
            commit_batch: raw_store.commit_batch,
            commit_spacing: raw_store.commit_spacing.0,
            max_age: raw_store.max_age.map(|a| a.0),
            segment_size: raw_store.segment_size.map(|s| s.bytes()),
            priority: crate::config::PriorityRules {
                anomaly_events: raw_store.priority.anomaly_events,
                anomalous_samples: raw_store.priority.anomalous_samples,
                devices: raw_store.priority.devices,
                fields: raw_store.priority.fields,
            },
        },
        mqtt_sources,
        simulated_sources,
        modbus_sources,
        models,
        uplinks,
        files: doc.file_paths().map(Path::to_path_buf).collect(),
    })
}
