//! Per-device sliding windows of the channels a model needs, in the model's order.
//! Bounded: W rows per device, and a cap on how many devices one binding tracks.
//!
//! A sample that cannot give every channel a finite number (bad quality, a missing or
//! non-numeric field, NaN) is handled by the binding's policy:
//! - `skip` (default): the sample does not enter the window and is not scored;
//! - `hold`: the channel's last good value stands in (skip if there is none yet);
//! - `reset`: the window starts over, so no window mixes before and after a gap.

use std::collections::VecDeque;

use serde::Deserialize;

use crate::sample::{Quality, Sample};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BadValues {
    #[default]
    Skip,
    Hold,
    Reset,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Pushed {
    /// A row was added; `ready` says whether a window should be scored now.
    Added { ready: bool },
    /// The sample was left out (`skip`/`hold` without a last value): the channel named.
    Skipped(String),
    /// The window was cleared (`reset`).
    Reset(String),
}

#[derive(Debug, Clone)]
pub struct DeviceWindow {
    rows: VecDeque<Vec<f32>>,
    last_good: Vec<Option<f32>>,
    rows_since_scored: usize,
}

/// The channel's value in this sample, if it is a usable number.
fn channel_value(sample: &Sample, channel: &str) -> Option<f32> {
    if !sample.quality.is_good() {
        return None;
    }
    if let Some(q) = sample.field_quality.get(channel)
        && !matches!(q, Quality::Good)
    {
        return None;
    }
    let value = sample.fields.get(channel)?.as_f64()?;
    let value = value as f32;
    value.is_finite().then_some(value)
}

impl DeviceWindow {
    pub fn new(channels: usize, window: usize) -> Self {
        DeviceWindow {
            rows: VecDeque::with_capacity(window),
            last_good: vec![None; channels],
            rows_since_scored: 0,
        }
    }

    pub fn push(
        &mut self,
        sample: &Sample,
        channels: &[String],
        window: usize,
        stride: usize,
        policy: BadValues,
    ) -> Pushed {
        let mut row = Vec::with_capacity(channels.len());
        for (i, channel) in channels.iter().enumerate() {
            match channel_value(sample, channel) {
                Some(v) => {
                    self.last_good[i] = Some(v);
                    row.push(v);
                }
                None => match (policy, self.last_good[i]) {
                    (BadValues::Hold, Some(previous)) => row.push(previous),
                    (BadValues::Reset, _) => {
                        self.rows.clear();
                        self.rows_since_scored = 0;
                        return Pushed::Reset(channel.clone());
                    }
                    _ => return Pushed::Skipped(channel.clone()),
                },
            }
        }
        if self.rows.len() == window {
            self.rows.pop_front();
        }
        self.rows.push_back(row);
        self.rows_since_scored += 1;
        let ready = self.rows.len() == window && self.rows_since_scored >= stride;
        if ready {
            self.rows_since_scored = 0;
        }
        Pushed::Added { ready }
    }

    /// Appends the window, oldest row first, to `out`.
    pub fn flatten_into(&self, out: &mut Vec<f32>) {
        for row in &self.rows {
            out.extend_from_slice(row);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::{BadReason, Value};

    fn sample(a: Option<f64>, b: f64) -> Sample {
        let mut s = Sample::new("t", "d", 0);
        if let Some(a) = a {
            s.fields.insert("a".into(), Value::Float(a));
        }
        s.fields.insert("b".into(), Value::Float(b));
        s
    }

    fn channels() -> Vec<String> {
        vec!["a".into(), "b".into()]
    }

    #[test]
    fn fills_slides_and_respects_the_stride() {
        let mut w = DeviceWindow::new(2, 3);
        let mut ready = Vec::new();
        for i in 0..7 {
            match w.push(
                &sample(Some(i as f64), -(i as f64)),
                &channels(),
                3,
                2,
                BadValues::Skip,
            ) {
                Pushed::Added { ready: r } => ready.push(r),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(ready, vec![false, false, true, false, true, false, true]);
        let mut out = Vec::new();
        w.flatten_into(&mut out);
        assert_eq!(out, vec![4.0, -4.0, 5.0, -5.0, 6.0, -6.0]);
    }

    #[test]
    fn bad_values_follow_the_policy() {
        let ch = channels();
        let mut skip = DeviceWindow::new(2, 2);
        skip.push(&sample(Some(1.0), 1.0), &ch, 2, 1, BadValues::Skip);
        assert_eq!(
            skip.push(&sample(None, 2.0), &ch, 2, 1, BadValues::Skip),
            Pushed::Skipped("a".into())
        );
        assert_eq!(
            skip.push(&sample(Some(f64::NAN), 2.0), &ch, 2, 1, BadValues::Skip),
            Pushed::Skipped("a".into())
        );

        let mut hold = DeviceWindow::new(2, 2);
        hold.push(&sample(Some(1.0), 1.0), &ch, 2, 1, BadValues::Hold);
        assert_eq!(
            hold.push(&sample(None, 2.0), &ch, 2, 1, BadValues::Hold),
            Pushed::Added { ready: true }
        );
        let mut out = Vec::new();
        hold.flatten_into(&mut out);
        assert_eq!(out, vec![1.0, 1.0, 1.0, 2.0]);

        let mut reset = DeviceWindow::new(2, 2);
        reset.push(&sample(Some(1.0), 1.0), &ch, 2, 1, BadValues::Reset);
        let mut bad = sample(Some(1.0), 1.0);
        bad.quality = Quality::Bad {
            reason: BadReason::Timeout,
            detail: String::new(),
        };
        assert_eq!(
            reset.push(&bad, &ch, 2, 1, BadValues::Reset),
            Pushed::Reset("a".into())
        );
        assert_eq!(
            reset.push(&sample(Some(1.0), 1.0), &ch, 2, 1, BadValues::Reset),
            Pushed::Added { ready: false }
        );
    }
}
