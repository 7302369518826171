//! Records as InfluxDB line protocol, so a site can write straight into a time-series
//! database (1.x `/write`, 2.x `/api/v2/write`, millisecond precision).
//!
//! One point per record:
//!
//! ```text
//! <measurement>,device=pump-7,gateway=plant-a-gw1,source=local flow=12.5,mode="auto",running=true,rpm=1480i,tidegate_seq=101i 1764340000123
//! ```
//!
//! Numbers, booleans and text keep their types (integers with the `i` suffix). A bad
//! sample gets the tag `quality=bad` and a `quality_detail` field; a scored sample gets
//! `anomaly_score`, `anomaly_threshold` and `is_anomaly`. `tidegate_seq` makes every
//! point carry the gateway's sequence number; a resent batch writes the same points
//! again, which InfluxDB treats as an overwrite, not a duplicate.

use crate::sample::{Quality, Record, Value};

/// Escapes `specials` with a backslash; a newline (which would end the line) becomes
/// the two characters `\n`.
fn escape_into(out: &mut String, text: &str, specials: &[char]) {
    for c in text.chars() {
        if c == '\n' {
            out.push_str("\\n");
            continue;
        }
        if specials.contains(&c) {
            out.push('\\');
        }
        out.push(c);
    }
}

const MEASUREMENT: &[char] = &[',', ' '];
const KEY: &[char] = &[',', '=', ' '];

fn string_field(out: &mut String, text: &str) {
    out.push('"');
    escape_into(out, text, &['"', '\\']);
    out.push('"');
}

/// Appends one record as a line.
pub fn encode_line(out: &mut String, measurement: &str, gateway: &str, record: &Record) {
    let sample = record.sample();
    let sample = &*sample;
    escape_into(out, measurement, MEASUREMENT);
    for (key, value) in [
        ("device", sample.device.as_str()),
        ("gateway", gateway),
        ("source", sample.source.as_str()),
    ] {
        // An empty tag value is not allowed in line protocol.
        if value.is_empty() {
            continue;
        }
        out.push(',');
        out.push_str(key);
        out.push('=');
        escape_into(out, value, KEY);
    }
    if !sample.quality.is_good() {
        out.push_str(",quality=bad");
    }
    out.push(' ');
    let mut first = true;
    let mut field = |out: &mut String, key: &str| {
        if !first {
            out.push(',');
        }
        first = false;
        escape_into(out, key, KEY);
        out.push('=');
    };
    for (key, value) in &sample.fields {
        match value {
            Value::Float(x) if !x.is_finite() => continue,
            Value::Float(x) => {
                field(out, key);
                out.push_str(&format!("{x:?}"));
            }
            Value::Int(i) => {
                field(out, key);
                out.push_str(&format!("{i}i"));
            }
            Value::Bool(b) => {
                field(out, key);
                out.push_str(if *b { "true" } else { "false" });
            }
            Value::Text(t) => {
                field(out, key);
                string_field(out, t);
            }
        }
    }
    if let Quality::Bad { reason, detail } = &sample.quality {
        field(out, "quality_detail");
        string_field(out, &format!("{reason:?}: {detail}").to_lowercase());
    }
    if let Some(anomaly) = &sample.anomaly {
        if anomaly.score.is_finite() {
            field(out, "anomaly_score");
            out.push_str(&format!("{:?}", anomaly.score));
        }
        field(out, "anomaly_threshold");
        out.push_str(&format!("{:?}", anomaly.threshold));
        field(out, "is_anomaly");
        out.push_str(if anomaly.is_anomaly { "true" } else { "false" });
    }
    field(out, "tidegate_seq");
    out.push_str(&format!("{}i", record.seq));
    out.push(' ');
    out.push_str(&sample.ts.to_string());
    out.push('\n');
}

/// The body of one write: a line per record.
pub fn encode(measurement: &str, gateway: &str, records: &[Record]) -> Vec<u8> {
    let mut out = String::with_capacity(records.len() * 160);
    for record in records {
        let sample = record.sample();
        let name = measurement
            .replace("{source}", &sample.source)
            .replace("{device}", &sample.device);
        encode_line(&mut out, &name, gateway, record);
    }
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::{Anomaly, BadReason, Sample};

    fn record() -> Record {
        let mut s = Sample::new("local", "pump 7,a", 1_764_340_000_123);
        s.fields.insert("flow".into(), Value::Float(12.5));
        s.fields.insert("rpm".into(), Value::Int(1480));
        s.fields.insert("running".into(), Value::Bool(true));
        s.fields
            .insert("mode".into(), Value::Text("say \"auto\"\nnow".into()));
        s.fields.insert("bad float".into(), Value::Float(f64::NAN));
        Record::new(101, s)
    }

    #[test]
    fn a_record_becomes_one_line_with_types_and_escapes() {
        let line = String::from_utf8(encode("{source}", "gw 1", &[record()])).unwrap();
        assert_eq!(
            line,
            "local,device=pump\\ 7\\,a,gateway=gw\\ 1,source=local flow=12.5,mode=\"say \\\"auto\\\"\\nnow\",\
             rpm=1480i,running=true,tidegate_seq=101i 1764340000123\n"
        );
    }

    #[test]
    fn quality_and_anomaly_are_kept() {
        let mut s = record().into_sample();
        s.fields.clear();
        s.quality = Quality::Bad {
            reason: BadReason::Timeout,
            detail: "no answer".into(),
        };
        s.anomaly = Some(Anomaly {
            score: 9.0,
            threshold: 8.0,
            is_anomaly: true,
            model: "m".into(),
            version: "".into(),
        });
        let line = String::from_utf8(encode("plant", "gw", &[Record::new(101, s)])).unwrap();
        assert!(line.contains(",quality=bad "), "{line}");
        assert!(
            line.contains("quality_detail=\"timeout: no answer\""),
            "{line}"
        );
        assert!(
            line.contains("anomaly_score=9.0,anomaly_threshold=8.0,is_anomaly=true"),
            "{line}"
        );
    }
}
