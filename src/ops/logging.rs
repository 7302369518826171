//! Logs go to journald when stderr is connected to it (systemd sets `$JOURNAL_STREAM`),
//! otherwise to stderr as plain lines. The level comes from config, overridden by
//! `TIDEGATE_LOG` in the environment.

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
            && log::set_boxed_logger(Box::new(Filtered(
                journal.with_syslog_identifier("tidegate".into()),
            )))
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
