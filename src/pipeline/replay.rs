//! `tidegate replay`: recorded data through the daemon's own window and inference code
//! (`DeviceWindow`, `LoadedModel`), row by row, with scores and flags per row and, when a
//! label column is given, the detection metrics the SKAB benchmark uses.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::model::LoadedModel;
use super::window::{BadValues, DeviceWindow, Pushed};
use crate::sample::{Sample, Value};

pub struct ReplayOptions {
    pub csv: PathBuf,
    pub separator: u8,
    /// Data rows to ignore at the start of the file.
    pub skip_rows: usize,
    /// Rows before this (0-based, after skipping) only fill windows: no output, no metrics.
    pub score_from: usize,
    pub timestamp_column: Option<String>,
    pub device_column: Option<String>,
    pub label_column: Option<String>,
    pub stride: usize,
    pub bad_values: BadValues,
    pub progress: bool,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Confusion {
    pub tp: u64,
    pub fp: u64,
    pub fn_: u64,
    pub tn: u64,
}

impl Confusion {
    pub fn add(&mut self, flagged: bool, label: bool) {
        match (flagged, label) {
            (true, true) => self.tp += 1,
            (true, false) => self.fp += 1,
            (false, true) => self.fn_ += 1,
            (false, false) => self.tn += 1,
        }
    }
    pub fn precision(&self) -> f64 {
        ratio(self.tp, self.tp + self.fp)
    }
    pub fn recall(&self) -> f64 {
        ratio(self.tp, self.tp + self.fn_)
    }
    /// F1 as the SKAB protocol defines it: TP / (TP + (FP + FN) / 2).
    pub fn f1(&self) -> f64 {
        let denominator = self.tp as f64 + (self.fp + self.fn_) as f64 / 2.0;
        if denominator == 0.0 {
            0.0
        } else {
            self.tp as f64 / denominator
        }
    }
    /// False-alarm rate FP / (FP + TN).
    pub fn far(&self) -> f64 {
        ratio(self.fp, self.fp + self.tn)
    }
    /// Missed-alarm rate FN / (FN + TP).
    pub fn mar(&self) -> f64 {
        ratio(self.fn_, self.fn_ + self.tp)
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// One scored row.
pub struct Row {
    pub index: usize,
    pub timestamp: String,
    pub device: String,
    pub values: Vec<Option<f64>>,
    pub score: Option<f64>,
    pub label: Option<bool>,
}

pub struct Replay {
    pub rows: Vec<Row>,
    pub threshold: f64,
    pub confusion: Option<Confusion>,
    pub channels: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{path}: {reason}")]
    Csv { path: String, reason: String },
    #[error(transparent)]
    Model(#[from] super::model::ModelError),
}

fn parse_label(text: &str) -> Option<bool> {
    let t = text.trim();
    if t.is_empty() {
        return None;
    }
    match t.parse::<f64>() {
        Ok(v) => Some(v != 0.0),
        Err(_) => Some(matches!(
            t.to_ascii_lowercase().as_str(),
            "true" | "yes" | "anomaly"
        )),
    }
}

pub fn run(model: &LoadedModel, options: &ReplayOptions) -> Result<Replay, ReplayError> {
    let path = options.csv.display().to_string();
    let csv_error = |reason: String| ReplayError::Csv {
        path: path.clone(),
        reason,
    };
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(options.separator)
        .flexible(true)
        .from_path(&options.csv)
        .map_err(|e| csv_error(e.to_string()))?;
    let headers = reader
        .headers()
        .map_err(|e| csv_error(e.to_string()))?
        .clone();
    let find = |name: &str| headers.iter().position(|h| h.trim() == name);
    let contract = &model.contract;
    let mut missing = Vec::new();
    let channel_index: Vec<usize> = contract
        .channels
        .iter()
        .filter_map(|c| {
            let i = find(c);
            if i.is_none() {
                missing.push(c.clone());
            }
            i
        })
        .collect();
    let optional = |name: &Option<String>, what: &str| -> Result<Option<usize>, ReplayError> {
        match name {
            None => Ok(None),
            Some(n) => find(n).map(Some).ok_or_else(|| {
                csv_error(format!(
                    "no {what} column \"{n}\"; the columns are: {}",
                    headers.iter().collect::<Vec<_>>().join(", ")
                ))
            }),
        }
    };
    if !missing.is_empty() {
        return Err(csv_error(format!(
            "the model needs column(s) {} that the file does not have; its columns are: {}",
            missing.join(", "),
            headers.iter().collect::<Vec<_>>().join(", ")
        )));
    }
    let ts_index = optional(&options.timestamp_column, "timestamp")?;
    let device_index = optional(&options.device_column, "device")?;
    let label_index = optional(&options.label_column, "label")?;

    let records: Vec<csv::StringRecord> = reader
        .records()
        .skip(options.skip_rows)
        .collect::<Result<_, _>>()
        .map_err(|e| csv_error(e.to_string()))?;
    let total = records.len();
    let mut windows: HashMap<String, DeviceWindow> = HashMap::new();
    let mut rows: Vec<Row> = Vec::with_capacity(total);
    let mut pending: Vec<usize> = Vec::new();
    let mut data: Vec<f32> = Vec::new();
    let mut next_report = 0;
    let flush = |pending: &mut Vec<usize>,
                 data: &mut Vec<f32>,
                 rows: &mut Vec<Row>|
     -> Result<(), ReplayError> {
        if pending.is_empty() {
            return Ok(());
        }
        model.normalise(data);
        let scores = model.score(data, pending.len())?;
        for (&row, score) in pending.iter().zip(scores) {
            rows[row].score = Some(f64::from(score));
        }
        pending.clear();
        data.clear();
        Ok(())
    };
    for (index, record) in records.iter().enumerate() {
        let values: Vec<Option<f64>> = channel_index
            .iter()
            .map(|&i| {
                record
                    .get(i)
                    .and_then(|t| t.trim().parse::<f64>().ok())
                    .filter(|v| v.is_finite())
            })
            .collect();
        let device = device_index
            .and_then(|i| record.get(i))
            .unwrap_or("")
            .to_string();
        // The same Sample and window code as the daemon.
        let mut sample = Sample::new("replay", device.clone(), index as i64);
        for (channel, value) in contract.channels.iter().zip(&values) {
            if let Some(v) = value {
                sample
                    .fields
                    .insert(channel.as_str().into(), Value::Float(*v));
            }
        }
        let window = windows
            .entry(device.clone())
            .or_insert_with(|| DeviceWindow::new(contract.channels.len(), contract.window));
        let ready = matches!(
            window.push(
                &sample,
                &contract.channels,
                contract.window,
                options.stride,
                options.bad_values
            ),
            Pushed::Added { ready: true }
        );
        rows.push(Row {
            index: index + options.skip_rows,
            timestamp: ts_index
                .and_then(|i| record.get(i))
                .unwrap_or("")
                .to_string(),
            device,
            values,
            score: None,
            label: label_index
                .and_then(|i| record.get(i))
                .and_then(parse_label),
        });
        if ready && index >= options.score_from {
            pending.push(rows.len() - 1);
            window.flatten_into(&mut data);
            if pending.len() >= 1024 {
                flush(&mut pending, &mut data, &mut rows)?;
            }
        }
        if options.progress && total >= 20_000 && index >= next_report {
            eprint!("\rreplay: {:>3}% of {total} rows", index * 100 / total);
            next_report = index + total / 100;
        }
    }
    flush(&mut pending, &mut data, &mut rows)?;
    if options.progress && total >= 20_000 {
        eprintln!("\rreplay: 100% of {total} rows");
    }
    let rows: Vec<Row> = rows.into_iter().skip(options.score_from).collect();
    let threshold = contract.threshold;
    let confusion = label_index.map(|_| {
        let mut c = Confusion::default();
        for row in &rows {
            if let Some(label) = row.label {
                c.add(row.score.is_some_and(|s| s > threshold), label);
            }
        }
        c
    });
    Ok(Replay {
        rows,
        threshold,
        confusion,
        channels: contract.channels.clone(),
    })
}

/// Per-row output: `row,timestamp,device,score,flag[,label]`.
pub fn write_rows(replay: &Replay, out: &mut dyn Write) -> std::io::Result<()> {
    let with_label = replay.confusion.is_some();
    writeln!(
        out,
        "row,timestamp,device,score,flag{}",
        if with_label { ",label" } else { "" }
    )?;
    for row in &replay.rows {
        let score = row.score.map(|s| format!("{s:.6}")).unwrap_or_default();
        let flag = u8::from(row.score.is_some_and(|s| s > replay.threshold));
        write!(
            out,
            "{},{},{},{score},{flag}",
            row.index, row.timestamp, row.device
        )?;
        if with_label {
            write!(
                out,
                ",{}",
                row.label
                    .map(|l| u8::from(l).to_string())
                    .unwrap_or_default()
            )?;
        }
        writeln!(out)?;
    }
    Ok(())
}

/// An SVG of the replay: the channels (each scaled to its own range), the score against
/// the threshold, and the labeled and flagged spans.
pub fn write_plot(replay: &Replay, path: &Path) -> std::io::Result<()> {
    use std::fmt::Write as _;
    // Rows of several devices interleave; a line through them would zigzag between
    // devices. The plot shows the first device's rows.
    let device = replay
        .rows
        .first()
        .map(|r| r.device.clone())
        .unwrap_or_default();
    let rows: Vec<&Row> = replay.rows.iter().filter(|r| r.device == device).collect();
    let rows = &rows;
    let (width, lane, gap) = (1200.0_f64, 60.0_f64, 10.0_f64);
    let lanes = replay.channels.len() + 2;
    let height = lanes as f64 * (lane + gap) + 40.0;
    let n = rows.len().max(2) as f64;
    let x = |i: usize| 100.0 + (i as f64) / (n - 1.0) * (width - 120.0);
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let spans = |pred: &dyn Fn(&Row) -> bool| -> Vec<(usize, usize)> {
        let rows = rows.iter().copied();
        let mut out = Vec::new();
        let mut start = None;
        let mut count = 0;
        for (i, row) in rows.enumerate() {
            count = i + 1;
            match (pred(row), start) {
                (true, None) => start = Some(i),
                (false, Some(s)) => {
                    out.push((s, i));
                    start = None;
                }
                _ => {}
            }
        }
        if let Some(s) = start {
            out.push((s, count));
        }
        out
    };
    let top = 20.0;
    let bottom = height - 20.0;
    for (a, b) in spans(&|r: &Row| r.label == Some(true)) {
        let _ = writeln!(
            svg,
            r##"<rect x="{:.1}" y="{top}" width="{:.1}" height="{:.1}" fill="#f4c7c3" opacity="0.6"><title>labeled anomaly</title></rect>"##,
            x(a),
            (x(b.saturating_sub(1).max(a)) - x(a)).max(1.0),
            bottom - top
        );
    }
    let threshold = replay.threshold;
    for (lane_index, name) in replay
        .channels
        .iter()
        .enumerate()
        .map(|(i, n)| (i, n.as_str()))
        .chain([(replay.channels.len(), "score")])
    {
        let y0 = top + lane_index as f64 * (lane + gap);
        let values: Vec<Option<f64>> = if name == "score" {
            rows.iter().map(|r| r.score).collect()
        } else {
            rows.iter().map(|r| r.values[lane_index]).collect()
        };
        let finite: Vec<f64> = values.iter().flatten().copied().collect();
        let (lo, hi) = finite
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| {
                (l.min(*v), h.max(*v))
            });
        let (lo, hi) = if name == "score" {
            (lo.min(threshold), hi.max(threshold))
        } else {
            (lo, hi)
        };
        let span = if hi > lo { hi - lo } else { 1.0 };
        let y = |v: f64| y0 + lane - (v - lo) / span * lane;
        let _ = writeln!(
            svg,
            r##"<text x="5" y="{:.1}" fill="#333">{name}</text>"##,
            y0 + lane / 2.0
        );
        let mut path_data = String::new();
        let mut pen_down = false;
        for (i, v) in values.iter().enumerate() {
            match v {
                Some(v) if v.is_finite() => {
                    let _ = write!(
                        path_data,
                        "{}{:.1},{:.1} ",
                        if pen_down { "L" } else { "M" },
                        x(i),
                        y(*v)
                    );
                    pen_down = true;
                }
                _ => pen_down = false,
            }
        }
        let color = if name == "score" { "#1a5fb4" } else { "#555" };
        let _ = writeln!(
            svg,
            r#"<path d="{path_data}" fill="none" stroke="{color}" stroke-width="1"/>"#
        );
        if name == "score" && finite.iter().any(|v| v.is_finite()) {
            let _ = writeln!(
                svg,
                r##"<line x1="100" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#c01c28" stroke-dasharray="4 3"><title>threshold {threshold}</title></line>"##,
                width - 20.0,
                y(threshold),
                y(threshold)
            );
        }
    }
    let flag_y = top + (replay.channels.len() + 1) as f64 * (lane + gap);
    let _ = writeln!(
        svg,
        r##"<text x="5" y="{:.1}" fill="#333">flagged</text>"##,
        flag_y + 12.0
    );
    for (a, b) in spans(&|r: &Row| r.score.is_some_and(|s| s > threshold)) {
        let _ = writeln!(
            svg,
            r##"<rect x="{:.1}" y="{flag_y:.1}" width="{:.1}" height="16" fill="#c01c28"/>"##,
            x(a),
            (x(b.saturating_sub(1).max(a)) - x(a)).max(1.0)
        );
    }
    let _ = writeln!(
        svg,
        r##"<text x="100" y="{:.1}" fill="#333">{}shaded: labeled anomalies; red bars: flagged (score above {threshold:.4})</text>"##,
        height - 5.0,
        if device.is_empty() {
            String::new()
        } else {
            format!("device {device}; ")
        }
    );
    svg.push_str("</svg>\n");
    std::fs::write(path, svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_follow_the_skab_definitions() {
        let c = Confusion {
            tp: 30,
            fp: 10,
            fn_: 20,
            tn: 140,
        };
        assert!((c.f1() - 30.0 / (30.0 + 15.0)).abs() < 1e-12);
        assert!((c.far() - 10.0 / 150.0).abs() < 1e-12);
        assert!((c.mar() - 20.0 / 50.0).abs() < 1e-12);
        assert!((c.precision() - 0.75).abs() < 1e-12);
        assert!((c.recall() - 0.6).abs() < 1e-12);
        assert_eq!(Confusion::default().f1(), 0.0);
    }

    #[test]
    fn labels_in_common_spellings() {
        assert_eq!(parse_label("1.0"), Some(true));
        assert_eq!(parse_label("0"), Some(false));
        assert_eq!(parse_label("true"), Some(true));
        assert_eq!(parse_label(""), None);
    }
}
