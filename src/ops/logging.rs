//! Logs go to journald when stderr is connected to it (systemd sets `$JOURNAL_STREAM`),
//! otherwise to stderr as plain lines. The level comes from config, overridden by
//! `TIDEGATE_LOG` in the environment.
//!
//! In the journal, each entry carries its priority (ERROR 3, WARN 4, INFO 5, DEBUG 6, so
//! `journalctl -p warning` shows what needs attention) and, where the message is about
//! one, the fields `SOURCE=`, `UPLINK=`, `DEVICE=` and `MODEL=`: `journalctl -u tidegate
//! UPLINK=cloud` shows one uplink's story. They are read off the message, whose first
//! words always name what it is about ("uplink cloud: …", "modbus line-1: device vfd-3
//! …"), so every line gets them without each call site repeating itself.

use std::io::Write;

use log::{LevelFilter, Log, Metadata, Record};

/// Where log lines went, for the start-up message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    Journal,
    Stderr,
}

/// Installs the logger once. Later calls only change the level (config reload, or the
/// config being read after logging started).
pub fn init(level: LevelFilter) -> Sink {
    let level = std::env::var("TIDEGATE_LOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(level);
    static SINK: std::sync::OnceLock<Sink> = std::sync::OnceLock::new();
    let sink = *SINK.get_or_init(|| {
        if systemd_journal_logger::connected_to_journal()
            && let Ok(journal) = systemd_journal_logger::JournalLog::new()
            && log::set_boxed_logger(Box::new(Filtered(Structured(
                journal.with_syslog_identifier("tidegate".into()),
            ))))
            .is_ok()
        {
            return Sink::Journal;
        }
        let _ = log::set_boxed_logger(Box::new(Filtered(StderrLog)));
        Sink::Stderr
    });
    log::set_max_level(level);
    sink
}

/// tidegate's own lines at the configured level; the libraries' (a Modbus client logs
/// every frame at debug) at WARN and above only, so that `debug` stays readable and
/// cheap.
struct Filtered<L>(L);

fn wanted(metadata: &Metadata<'_>) -> bool {
    let level = metadata.level();
    if level > log::max_level() {
        return false;
    }
    metadata.target().starts_with("tidegate") || level <= log::Level::Warn
}

impl<L: Log> Log for Filtered<L> {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        wanted(metadata) && self.0.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if wanted(record.metadata()) {
            self.0.log(record);
        }
    }

    fn flush(&self) {
        self.0.flush();
    }
}

/// Journal fields read off a message: what it is about.
pub fn fields_of(message: &str) -> Vec<(&'static str, String)> {
    let mut fields = Vec::new();
    for (prefix, field) in [
        ("source ", "SOURCE"),
        ("uplink ", "UPLINK"),
        ("modbus ", "SOURCE"),
        ("model ", "MODEL"),
    ] {
        let Some(rest) = message.strip_prefix(prefix) else {
            continue;
        };
        let Some((name, after)) = rest.split_once(": ") else {
            break;
        };
        if name.is_empty() || name.contains(' ') {
            break;
        }
        fields.push((field, name.to_string()));
        if let Some(device) = after.strip_prefix("device ")
            && let Some(device) = device.split([' ', ':', ',']).next()
            && !device.is_empty()
        {
            fields.push(("DEVICE", device.to_string()));
        }
        break;
    }
    fields
}

struct Fields(Vec<(&'static str, String)>);

impl log::kv::Source for Fields {
    fn visit<'kvs>(
        &'kvs self,
        visitor: &mut dyn log::kv::VisitSource<'kvs>,
    ) -> Result<(), log::kv::Error> {
        for (key, value) in &self.0 {
            visitor.visit_pair(
                log::kv::Key::from_str(key),
                log::kv::Value::from(value.as_str()),
            )?;
        }
        Ok(())
    }
}

/// Adds the fields of [`fields_of`] to each record on its way to the journal.
struct Structured<L>(L);

impl<L: Log> Log for Structured<L> {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.0.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        let message = record.args().to_string();
        let fields = Fields(fields_of(&message));
        if fields.0.is_empty() {
            self.0.log(record);
            return;
        }
        self.0.log(
            &Record::builder()
                .args(format_args!("{message}"))
                .metadata(record.metadata().clone())
                .module_path(record.module_path())
                .file(record.file())
                .line(record.line())
                .key_values(&fields)
                .build(),
        );
    }

    fn flush(&self) {
        self.0.flush();
    }
}

struct StderrLog;

impl Log for StderrLog {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let now = time::OffsetDateTime::now_utc();
        let stamp = now
            .format(&time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
            ))
            .unwrap_or_default();
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{stamp} {:<5} {}", record.level(), record.args());
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

#[cfg(test)]
mod tests {
    use super::fields_of;

    #[test]
    fn fields_are_read_off_the_first_words() {
        assert_eq!(
            fields_of("uplink cloud: backend unavailable (HTTP 503)"),
            vec![("UPLINK", "cloud".to_string())]
        );
        assert_eq!(
            fields_of("modbus line-1: device vfd-3 (unit 3) stopped answering"),
            vec![
                ("SOURCE", "line-1".to_string()),
                ("DEVICE", "vfd-3".to_string())
            ]
        );
        assert_eq!(
            fields_of("source local: connected to 127.0.0.1:1883"),
            vec![("SOURCE", "local".to_string())]
        );
        assert_eq!(
            fields_of("model pumps: loaded"),
            vec![("MODEL", "pumps".to_string())]
        );
        assert!(fields_of("store full: evicted 3").is_empty());
        assert!(fields_of("source of trouble is unclear").is_empty());
    }
}
