//! Local outputs: an NDJSON file (one record per line, fsynced per batch) and stdout
//! (NDJSON or a readable line per record), for the demo, commissioning and debugging.

use std::io::Write;
use std::path::PathBuf;

use super::{Delivery, Sink};
use crate::config::StdoutFormat;
use crate::sample::{Record, RecordForm};

pub struct FileSink {
    path: PathBuf,
}

impl FileSink {
    pub fn new(path: PathBuf) -> Self {
        FileSink { path }
    }
}

impl Sink for FileSink {
    fn form(&self) -> RecordForm {
        RecordForm::Json
    }

    async fn send(&mut self, records: &[Record]) -> Delivery {
        let mut buf = Vec::with_capacity(records.len() * 200);
        for record in records {
            record.write_json(&mut buf);
            buf.push(b'\n');
        }
        let path = self.path.clone();
        let result = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?;
            file.write_all(&buf)?;
            file.sync_data()
        })
        .await;
        match result {
            Ok(Ok(())) => Delivery::Delivered,
            Ok(Err(e)) => Delivery::Retry {
                reason: format!("cannot write {}: {e}", self.path.display()),
                after: None,
            },
            Err(e) => Delivery::Retry {
                reason: format!("file writer failed: {e}"),
                after: None,
            },
        }
    }
}

pub struct StdoutSink {
    format: StdoutFormat,
}

impl StdoutSink {
    pub fn new(format: StdoutFormat) -> Self {
        StdoutSink { format }
    }
}

/// `2026-11-28T14:35:30.123Z pump-1 #42 flow=12.5 mode="auto" anomaly=0.12/0.80`
pub fn text_line(record: &Record) -> String {
    use std::fmt::Write as _;
    let s = record.sample();
    let s = &*s;
    let ts = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(s.ts) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
            ))
            .ok()
        })
        .unwrap_or_else(|| s.ts.to_string());
    let mut line = format!("{ts} {:<12} #{}", s.device, record.seq);
    for (name, value) in &s.fields {
        let _ = match value {
            crate::sample::Value::Float(f) => write!(line, " {name}={f:.3}"),
            other => write!(line, " {name}={other}"),
        };
    }
    if !s.quality.is_good() {
        let _ = write!(line, " quality={:?}", s.quality);
    }
    if let Some(a) = &s.anomaly {
        let _ = write!(
            line,
            " anomaly={:.3}/{:.3}{}",
            a.score,
            a.threshold,
            if a.is_anomaly { " ANOMALY" } else { "" }
        );
    }
    line
}

impl Sink for StdoutSink {
    fn form(&self) -> RecordForm {
        match self.format {
            StdoutFormat::Json => RecordForm::Json,
            StdoutFormat::Text => RecordForm::Sample,
        }
    }

    async fn send(&mut self, records: &[Record]) -> Delivery {
        let mut out = Vec::with_capacity(records.len() * 160);
        for record in records {
            match self.format {
                StdoutFormat::Json => record.write_json(&mut out),
                StdoutFormat::Text => out.extend_from_slice(text_line(record).as_bytes()),
            }
            out.push(b'\n');
        }
        let mut stdout = std::io::stdout().lock();
        match stdout.write_all(&out).and_then(|()| stdout.flush()) {
            Ok(()) => Delivery::Delivered,
            // A closed pipe (`tidegate demo | head`) will not come back: stop holding data for it.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Delivery::Rejected {
                reason: "stdout is closed".into(),
            },
            Err(e) => Delivery::Retry {
                reason: format!("cannot write to stdout: {e}"),
                after: None,
            },
        }
    }
}
