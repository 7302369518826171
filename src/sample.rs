//! The types every stage shares: a [`Sample`] is one device at one instant with many
//! fields; a [`Record`] is a sample once the store has given it a sequence number.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// One field value. Integers stay integers (a 64-bit counter must not lose digits to a
/// float); text and booleans are kept as they came.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Value {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

/// Written by hand rather than `#[serde(untagged)]`, which tries each variant in turn and
/// builds an error for every miss: this runs for every field of every record an uplink
/// reads back from the store.
impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Value;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number, boolean or string")
            }
            fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
                Ok(Value::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
                Ok(Value::Int(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
                Ok(i64::try_from(v)
                    .map(Value::Int)
                    .unwrap_or(Value::Float(v as f64)))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
                Ok(Value::Float(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Value, E> {
                Ok(Value::Text(v.to_string()))
            }
            fn visit_string<E>(self, v: String) -> Result<Value, E> {
                Ok(Value::Text(v))
            }
        }
        deserializer.deserialize_any(V)
    }
}

impl Value {
    /// The value as a number, for models and scaling. Text has none.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Bool(b) => Some(f64::from(u8::from(*b))),
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            Value::Text(_) => None,
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Text(s) => write!(f, "{s:?}"),
        }
    }
}

/// Why a value (or a whole sample) is not trustworthy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Quality {
    Good,
    Bad { reason: BadReason, detail: String },
}

impl Quality {
    pub fn is_good(&self) -> bool {
        matches!(self, Quality::Good)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BadReason {
    Timeout,
    Exception,
    Decode,
    Disconnected,
}

fn is_good(q: &Quality) -> bool {
    q.is_good()
}

/// The anomaly verdict the inference stage attaches to a sample. The model's name and
/// version are shared, like field names: every scored sample carries them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Anomaly {
    pub score: f64,
    pub threshold: f64,
    pub is_anomaly: bool,
    pub model: std::sync::Arc<str>,
    #[serde(default = "no_version", skip_serializing_if = "is_empty")]
    pub version: std::sync::Arc<str>,
}

fn no_version() -> std::sync::Arc<str> {
    "".into()
}

fn is_empty(s: &std::sync::Arc<str>) -> bool {
    s.is_empty()
}

/// The name of a field. Shared rather than owned: a Modbus device's point names, say, are
/// put into every sample it produces, and a shared name costs a counter increment where a
/// `String` would cost an allocation and a copy.
pub type FieldName = std::sync::Arc<str>;

/// One device at one instant.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Name of the configured source that produced it.
    pub source: String,
    pub device: String,
    /// Sample time, UTC milliseconds since the Unix epoch.
    pub ts: i64,
    pub fields: BTreeMap<FieldName, Value>,
    /// Quality of the sample as a whole.
    #[serde(default = "good", skip_serializing_if = "is_good")]
    pub quality: Quality,
    /// Per-field quality, only for fields that are not good.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub field_quality: BTreeMap<FieldName, Quality>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anomaly: Option<Anomaly>,
}

fn good() -> Quality {
    Quality::Good
}

impl Sample {
    pub fn new(source: impl Into<String>, device: impl Into<String>, ts: i64) -> Self {
        Sample {
            source: source.into(),
            device: device.into(),
            ts,
            fields: BTreeMap::new(),
            quality: Quality::Good,
            field_quality: BTreeMap::new(),
            anomaly: None,
        }
    }
}

/// A committed sample: what the store keeps and the uplinks send.
///
/// Read for an uplink that sends JSON ([`RecordForm::Json`]), a record holds the sample's
/// JSON exactly as the store keeps it and is written out without being decoded and
/// encoded again: for a 45-point Modbus device that was a fifth of the daemon's CPU.
/// Serialised (with serde_json) it is `{"seq": …, <the sample's fields>}` either way.
#[derive(Clone, Debug)]
pub struct Record {
    /// Position in the store: strictly increasing, never reused.
    pub seq: u64,
    body: Body,
}

#[derive(Clone, Debug)]
enum Body {
    Sample(Sample),
    /// A JSON object encoding a [`Sample`], as the store wrote it.
    Json(Box<str>),
}

/// How an uplink wants its records: decoded, or as the JSON they are stored in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordForm {
    Sample,
    Json,
}

#[derive(Serialize)]
struct FlatRef<'a> {
    seq: u64,
    #[serde(flatten)]
    sample: &'a Sample,
}

#[derive(Deserialize)]
struct Flat {
    seq: u64,
    #[serde(flatten)]
    sample: Sample,
}

impl Record {
    pub fn new(seq: u64, sample: Sample) -> Self {
        Record {
            seq,
            body: Body::Sample(sample),
        }
    }

    /// A record kept as `json`, which must be a JSON object that decodes to a [`Sample`]
    /// (the store's frame body).
    pub fn from_json(seq: u64, json: Box<str>) -> Self {
        Record {
            seq,
            body: Body::Json(json),
        }
    }

    /// The sample. A record read as JSON is decoded here; the store hands JSON records
    /// only to uplinks that asked for them, and those never look inside, so this decodes
    /// records the store itself wrote.
    pub fn sample(&self) -> std::borrow::Cow<'_, Sample> {
        match &self.body {
            Body::Sample(sample) => std::borrow::Cow::Borrowed(sample),
            Body::Json(json) => std::borrow::Cow::Owned(
                serde_json::from_str(json)
                    .unwrap_or_else(|e| panic!("record {} does not decode: {e}", self.seq)),
            ),
        }
    }

    /// Appends the record's JSON, `{"seq":N,…}`, to `out`. A record kept as stored JSON
    /// is spliced, not parsed: the store wrote it from a [`Sample`], and it is never empty
    /// (source, device and ts are always there).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        match &self.body {
            Body::Sample(sample) => serde_json::to_writer(
                &mut *out,
                &FlatRef {
                    seq: self.seq,
                    sample,
                },
            )
            .expect("a sample always serialises to JSON"),
            Body::Json(json) => {
                use std::io::Write as _;
                let rest = json.strip_prefix('{').unwrap_or(json);
                let _ = write!(out, "{{\"seq\":{},", self.seq);
                out.extend_from_slice(rest.as_bytes());
            }
        }
    }

    pub fn into_sample(self) -> Sample {
        match self.body {
            Body::Sample(sample) => sample,
            Body::Json(_) => self.sample().into_owned(),
        }
    }
}

impl PartialEq for Record {
    fn eq(&self, other: &Self) -> bool {
        self.seq == other.seq && self.sample() == other.sample()
    }
}

impl Serialize for Record {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.body {
            Body::Sample(sample) => FlatRef {
                seq: self.seq,
                sample,
            }
            .serialize(serializer),
            // Inside another document (a dead letter): the uplinks' own bodies use
            // `write_json`, which spares the check `RawValue` makes.
            Body::Json(_) => {
                let mut json = Vec::new();
                self.write_json(&mut json);
                let json = String::from_utf8(json).map_err(serde::ser::Error::custom)?;
                serde_json::value::RawValue::from_string(json)
                    .map_err(serde::ser::Error::custom)?
                    .serialize(serializer)
            }
        }
    }
}

impl<'de> Deserialize<'de> for Record {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let Flat { seq, sample } = Flat::deserialize(deserializer)?;
        Ok(Record::new(seq, sample))
    }
}

/// Wall-clock time in UTC milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_json_keeps_every_field_and_type() {
        let mut sample = Sample::new("mqtt", "pump-1", 1_700_000_000_123);
        sample.fields.insert("flow".into(), Value::Float(12.5));
        sample
            .fields
            .insert("count".into(), Value::Int(9_007_199_254_740_993));
        sample.fields.insert("running".into(), Value::Bool(true));
        sample
            .fields
            .insert("mode".into(), Value::Text("auto".into()));
        let record = Record::new(7, sample);
        let json = serde_json::to_string(&record).unwrap();
        assert!(json.contains("\"count\":9007199254740993"), "{json}");
        assert!(
            !json.contains("quality"),
            "good quality is implicit: {json}"
        );
        let back: Record = serde_json::from_str(&json).unwrap();
        assert_eq!(back, record);
    }

    #[test]
    fn a_record_kept_as_stored_json_writes_the_same_json_and_equals_the_decoded_one() {
        let mut sample = Sample::new("plc", "meter \"7\"", 1_700_000_000_123);
        sample.fields.insert("kwh".into(), Value::Float(1234.5));
        sample.fields.insert("count".into(), Value::Int(i64::MAX));
        sample.anomaly = Some(Anomaly {
            score: 1.5,
            threshold: 2.0,
            is_anomaly: false,
            model: "pump".into(),
            version: "3".into(),
        });
        let stored = serde_json::to_string(&sample).unwrap();
        let decoded = Record::new(42, sample.clone());
        let kept = Record::from_json(42, stored.into_boxed_str());
        assert_eq!(
            serde_json::to_string(&kept).unwrap(),
            serde_json::to_string(&decoded).unwrap()
        );
        let (mut spliced, mut encoded) = (Vec::new(), Vec::new());
        kept.write_json(&mut spliced);
        decoded.write_json(&mut encoded);
        assert_eq!(
            String::from_utf8(spliced).unwrap(),
            serde_json::to_string(&decoded).unwrap()
        );
        assert_eq!(
            String::from_utf8(encoded).unwrap(),
            serde_json::to_string(&decoded).unwrap()
        );
        assert_eq!(kept, decoded);
        assert_eq!(kept.sample().into_owned(), sample);
        // Inside a larger document (a batch body, a dead letter) as well.
        let value = serde_json::json!({ "records": [&kept] });
        assert_eq!(value["records"][0]["seq"], 42);
        assert_eq!(value["records"][0]["device"], "meter \"7\"");
        let back: Record = serde_json::from_value(value["records"][0].clone()).unwrap();
        assert_eq!(back, decoded);
        assert_ne!(kept, Record::new(43, sample));
    }
}
