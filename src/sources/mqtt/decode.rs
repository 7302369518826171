//! JSON payload → samples. Pure: no I/O, no clock (the receive time is passed in), so it
//! is unit- and property-tested directly. The gateway adds, never drops: every payload
//! field is kept (the parsing and flattening is `flatten`'s), and here the topic's
//! captures, the device and the timestamp are added.

use serde_json::Value as Json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::flatten::{Names, Object};
use crate::config::{SubscriptionConfig, TimestampFormat};
use crate::sample::{Sample, Value};

/// Nesting deeper than this is rejected rather than flattened into absurd keys.
pub const MAX_DEPTH: usize = 16;
/// More fields than this in one sample is rejected (a payload bomb, not telemetry).
pub const MAX_FIELDS: usize = 4096;
/// More samples than this in one array payload is rejected.
pub const MAX_SAMPLES_PER_MESSAGE: usize = 10_000;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("payload of {size} bytes exceeds max_payload ({max} bytes)")]
    Oversize { size: usize, max: usize },
    #[error("payload is not valid JSON: {0}")]
    NotJson(String),
    #[error("payload must be a JSON object or an array of objects, found {0}")]
    NotObject(&'static str),
    #[error("topic does not match template {0}")]
    TopicMismatch(String),
    #[error("device field \"{0}\" is missing or not a string/integer")]
    MissingDevice(String),
    #[error("timestamp field \"{field}\": {reason}")]
    BadTimestamp { field: String, reason: String },
    #[error("nesting deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("more than {MAX_FIELDS} fields in one sample")]
    TooManyFields,
    #[error("more than {MAX_SAMPLES_PER_MESSAGE} samples in one message")]
    TooManySamples,
}

impl DecodeError {
    /// Short label for counters and summaries.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::Oversize { .. } => "oversize",
            DecodeError::NotJson(_) => "not_json",
            DecodeError::NotObject(_) => "not_object",
            DecodeError::TopicMismatch(_) => "topic_mismatch",
            DecodeError::MissingDevice(_) => "missing_device",
            DecodeError::BadTimestamp { .. } => "bad_timestamp",
            DecodeError::TooDeep => "too_deep",
            DecodeError::TooManyFields => "too_many_fields",
            DecodeError::TooManySamples => "too_many_samples",
        }
    }
}

/// Decodes one MQTT message into samples; `names` are the source's field names so far.
pub fn decode(
    source: &str,
    topic: &str,
    payload: &[u8],
    received_ms: i64,
    sub: &SubscriptionConfig,
    max_payload: usize,
    names: &mut Names,
) -> Result<Vec<Sample>, DecodeError> {
    if payload.len() > max_payload {
        return Err(DecodeError::Oversize {
            size: payload.len(),
            max: max_payload,
        });
    }
    let captures = match &sub.template {
        Some(template) => template
            .captures(topic)
            .ok_or_else(|| DecodeError::TopicMismatch(template.to_string()))?,
        None => Vec::new(),
    };
    let keep = [sub.timestamp_field.as_deref(), sub.device_field.as_deref()];
    let objects = super::flatten::objects(payload, keep, names)?;
    let mut samples = Vec::with_capacity(objects.len());
    for Object { mut fields, kept } in objects {
        let device = device_for(topic, &captures, sub, &kept)?;
        for (name, value) in &captures {
            if *name != "device" {
                fields
                    .entry(names.get(name))
                    .or_insert_with(|| Value::Text((*value).to_string()));
            }
        }
        let ts = match &sub.timestamp_field {
            Some(field) => match kept.get(field) {
                None | Some(Json::Null) => received_ms,
                Some(value) => parse_timestamp(value, sub.timestamp_format).map_err(|reason| {
                    DecodeError::BadTimestamp {
                        field: field.clone(),
                        reason,
                    }
                })?,
            },
            None => received_ms,
        };
        let mut sample = Sample::new(source, device, ts);
        sample.fields = fields;
        samples.push(sample);
    }
    Ok(samples)
}

fn device_for(
    topic: &str,
    captures: &[(&str, &str)],
    sub: &SubscriptionConfig,
    kept: &serde_json::Map<String, Json>,
) -> Result<String, DecodeError> {
    if let Some((_, device)) = captures.iter().find(|(name, _)| *name == "device") {
        return Ok((*device).to_string());
    }
    if let Some(field) = &sub.device_field {
        return match kept.get(field) {
            Some(Json::String(s)) if !s.is_empty() => Ok(s.clone()),
            Some(Json::Number(n)) if n.is_i64() || n.is_u64() => Ok(n.to_string()),
            _ => Err(DecodeError::MissingDevice(field.clone())),
        };
    }
    Ok(topic.to_string())
}

fn json_kind(value: &Json) -> &'static str {
    match value {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

/// Epoch numbers are accepted between 1970 and 2200 in their unit; `auto` picks the unit
/// by magnitude (seconds below 1e11, milliseconds below 1e14, microseconds above).
pub fn parse_timestamp(value: &Json, format: TimestampFormat) -> Result<i64, String> {
    let from_number = |n: f64, format: TimestampFormat| -> Result<i64, String> {
        if !n.is_finite() || n < 0.0 {
            return Err(format!("{n} is not a valid epoch time"));
        }
        let unit = match format {
            TimestampFormat::EpochS => 1_000.0,
            TimestampFormat::EpochMs => 1.0,
            TimestampFormat::EpochUs => 0.001,
            _ if n < 1e11 => 1_000.0,
            _ if n < 1e14 => 1.0,
            _ => 0.001,
        };
        let ms = n * unit;
        // 7_258_118_400_000 ms is 2200-01-01.
        if ms > 7_258_118_400_000.0 {
            return Err(format!("{n} is too far in the future for {format:?}"));
        }
        Ok(ms.round() as i64)
    };
    match (value, format) {
        (Json::Number(n), TimestampFormat::Rfc3339) => {
            Err(format!("expected an RFC 3339 string, found {n}"))
        }
        (Json::Number(n), f) => from_number(n.as_f64().unwrap_or(f64::NAN), f),
        (Json::String(s), TimestampFormat::Auto | TimestampFormat::Rfc3339) => {
            OffsetDateTime::parse(s, &Rfc3339)
                .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
                .map_err(|e| format!("\"{s}\" is not RFC 3339: {e}"))
        }
        (Json::String(s), f) => s
            .trim()
            .parse::<f64>()
            .map_err(|_| format!("\"{s}\" is not a number"))
            .and_then(|n| from_number(n, f)),
        (other, _) => Err(format!(
            "expected a number or a string, found {}",
            json_kind(other)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::FieldName;
    use crate::sources::mqtt::topic::TopicTemplate;
    use std::collections::BTreeMap;

    fn sub() -> SubscriptionConfig {
        SubscriptionConfig {
            filter: "plant/+/+/telemetry".into(),
            qos: 1,
            template: Some(TopicTemplate::parse("plant/{line}/{device}/telemetry").unwrap()),
            device_field: None,
            timestamp_field: Some("ts".into()),
            timestamp_format: TimestampFormat::Auto,
        }
    }

    #[test]
    fn keeps_every_field_and_flattens_nesting() {
        let payload = br#"{"ts": 1700000000, "flow": 12.5, "count": 42, "ok": true,
            "mode": "auto", "motor": {"rpm": 1480, "temp": {"c": 61.2}}, "v": [1, 2], "gone": null}"#;
        let samples = decode(
            "local",
            "plant/l1/pump-3/telemetry",
            payload,
            5,
            &sub(),
            1 << 20,
            &mut Names::default(),
        )
        .unwrap();
        assert_eq!(samples.len(), 1);
        let s = &samples[0];
        assert_eq!(s.device, "pump-3");
        assert_eq!(s.ts, 1_700_000_000_000);
        assert_eq!(s.fields["flow"], Value::Float(12.5));
        assert_eq!(s.fields["count"], Value::Int(42));
        assert_eq!(s.fields["ok"], Value::Bool(true));
        assert_eq!(s.fields["mode"], Value::Text("auto".into()));
        assert_eq!(s.fields["motor.rpm"], Value::Int(1480));
        assert_eq!(s.fields["motor.temp.c"], Value::Float(61.2));
        assert_eq!(s.fields["v.1"], Value::Int(2));
        assert_eq!(s.fields["line"], Value::Text("l1".into()));
        assert_eq!(s.fields["ts"], Value::Int(1_700_000_000));
        assert!(!s.fields.contains_key("gone"));
    }

    #[test]
    fn arrays_give_one_sample_each() {
        let payload = br#"[{"ts": "2026-11-28T10:00:00.250+01:00", "a": 1}, {"a": 2}]"#;
        let samples = decode(
            "local",
            "plant/l1/p/telemetry",
            payload,
            77,
            &sub(),
            1 << 20,
            &mut Names::default(),
        )
        .unwrap();
        assert_eq!(samples.len(), 2);
        assert_eq!(samples[0].ts, 1_795_856_400_250);
        assert_eq!(
            samples[1].ts, 77,
            "a missing timestamp falls back to receipt time"
        );
    }

    #[test]
    fn malformed_payloads_are_typed_errors() {
        let s = sub();
        let topic = "plant/l1/p/telemetry";
        let kind = |payload: &[u8]| {
            decode("x", topic, payload, 0, &s, 64, &mut Names::default())
                .unwrap_err()
                .kind()
        };
        assert_eq!(kind(b"not json"), "not_json");
        assert_eq!(kind(b"{\"a\": NaN}"), "not_json");
        assert_eq!(kind(b"42"), "not_object");
        assert_eq!(kind(b"[1]"), "not_object");
        assert_eq!(kind(&[b' '; 65]), "oversize");
        assert_eq!(kind(b"{\"ts\": true}"), "bad_timestamp");
        let deep = format!(
            "{}{}",
            "{\"a\":".repeat(20),
            "1".to_string() + &"}".repeat(20)
        );
        assert_eq!(
            decode(
                "x",
                topic,
                deep.as_bytes(),
                0,
                &s,
                1 << 20,
                &mut Names::default()
            )
            .unwrap_err()
            .kind(),
            "too_deep"
        );
        assert_eq!(
            decode("x", "other/topic", b"{}", 0, &s, 64, &mut Names::default())
                .unwrap_err()
                .kind(),
            "topic_mismatch"
        );
    }

    #[test]
    fn device_from_payload_field() {
        let mut s = sub();
        s.template = None;
        s.device_field = Some("id".into());
        let samples = decode(
            "x",
            "t",
            br#"{"id": "m-1", "v": 1}"#,
            0,
            &s,
            1024,
            &mut Names::default(),
        )
        .unwrap();
        assert_eq!(samples[0].device, "m-1");
        assert_eq!(samples[0].fields["id"], Value::Text("m-1".into()));
        assert_eq!(
            decode("x", "t", br#"{"v": 1}"#, 0, &s, 1024, &mut Names::default())
                .unwrap_err()
                .kind(),
            "missing_device"
        );
    }

    #[test]
    fn timestamp_units() {
        use serde_json::json;
        assert_eq!(
            parse_timestamp(&json!(1_700_000_000_123i64), TimestampFormat::Auto).unwrap(),
            1_700_000_000_123
        );
        assert_eq!(
            parse_timestamp(&json!(1_700_000_000_123_456i64), TimestampFormat::Auto).unwrap(),
            1_700_000_000_123
        );
        assert_eq!(
            parse_timestamp(&json!(1.5), TimestampFormat::EpochS).unwrap(),
            1500
        );
        assert!(parse_timestamp(&json!(-1), TimestampFormat::Auto).is_err());
        assert!(parse_timestamp(&json!("yesterday"), TimestampFormat::Auto).is_err());
    }

    #[test]
    fn limits_and_shapes_are_refused_with_their_reason() {
        let mut s = sub();
        s.timestamp_field = None;
        let run = |payload: &[u8]| {
            decode(
                "x",
                "plant/a/b/telemetry",
                payload,
                0,
                &s,
                1 << 24,
                &mut Names::default(),
            )
        };
        let deep = format!(
            "{}1{}",
            "{\"a\":".repeat(MAX_DEPTH + 1),
            "}".repeat(MAX_DEPTH + 1)
        );
        assert_eq!(run(deep.as_bytes()), Err(DecodeError::TooDeep));
        let just_deep_enough = format!("{}1{}", "{\"a\":".repeat(MAX_DEPTH), "}".repeat(MAX_DEPTH));
        let fields = &run(just_deep_enough.as_bytes()).unwrap()[0].fields;
        assert_eq!(fields[["a"; MAX_DEPTH].join(".").as_str()], Value::Int(1));
        let wide = format!("[{}]", vec!["0"; MAX_FIELDS + 1].join(","));
        let wide = format!("{{\"v\":{wide}}}");
        assert_eq!(run(wide.as_bytes()), Err(DecodeError::TooManyFields));
        let many = format!("[{}]", vec!["{}"; MAX_SAMPLES_PER_MESSAGE + 1].join(","));
        assert_eq!(run(many.as_bytes()), Err(DecodeError::TooManySamples));
        assert_eq!(
            run(b"[{\"a\":1}, 2]"),
            Err(DecodeError::NotObject("a number"))
        );
        assert_eq!(run(b"null"), Err(DecodeError::NotObject("null")));
        assert!(matches!(run(b"{\"a\":1} x"), Err(DecodeError::NotJson(_))));
        assert!(matches!(run(b"{\"a\":"), Err(DecodeError::NotJson(_))));
        assert_eq!(run(b"[]").unwrap().len(), 0);
    }

    /// The reference the parser is held to: flattening a parsed JSON tree.
    fn flatten(
        object: &serde_json::Map<String, Json>,
        prefix: &str,
        depth: usize,
        out: &mut BTreeMap<FieldName, Value>,
    ) -> Result<(), DecodeError> {
        if depth > MAX_DEPTH {
            return Err(DecodeError::TooDeep);
        }
        for (key, value) in object {
            let name = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            flatten_value(value, name, depth, out)?;
        }
        Ok(())
    }

    fn flatten_value(
        value: &Json,
        name: String,
        depth: usize,
        out: &mut BTreeMap<FieldName, Value>,
    ) -> Result<(), DecodeError> {
        let leaf = match value {
            Json::Null => return Ok(()),
            Json::Bool(b) => Value::Bool(*b),
            Json::Number(n) => match n.as_i64() {
                Some(i) => Value::Int(i),
                // serde_json never yields NaN or infinity; u64 above i64::MAX becomes a float.
                None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            Json::String(s) => Value::Text(s.clone()),
            Json::Object(map) => return flatten(map, &name, depth + 1, out),
            Json::Array(items) => {
                if depth + 1 > MAX_DEPTH {
                    return Err(DecodeError::TooDeep);
                }
                for (i, item) in items.iter().enumerate() {
                    flatten_value(item, format!("{name}.{i}"), depth + 1, out)?;
                }
                return Ok(());
            }
        };
        if out.len() >= MAX_FIELDS {
            return Err(DecodeError::TooManyFields);
        }
        out.insert(name.into(), leaf);
        Ok(())
    }

    /// Objects with scalars, nulls, nested objects and arrays, some deeper than
    /// MAX_DEPTH. Keys never contain '.', so flattened names cannot collide.
    fn json_object() -> impl proptest::strategy::Strategy<Value = Json> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Json::Null),
            any::<bool>().prop_map(Json::Bool),
            any::<i64>().prop_map(Json::from),
            any::<u64>().prop_map(Json::from),
            (-1e12f64..1e12).prop_map(Json::from),
            "[a-z ]{0,6}".prop_map(Json::from),
        ];
        let value = leaf.prop_recursive(20, 200, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Json::Array),
                proptest::collection::btree_map("[a-z]{1,4}", inner, 0..4)
                    .prop_map(|m| Json::Object(m.into_iter().collect())),
            ]
        });
        proptest::collection::btree_map("[a-z]{1,4}", value, 0..6)
            .prop_map(|m| Json::Object(m.into_iter().collect()))
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = decode("x", "plant/a/b/telemetry", &bytes, 0, &sub(), 1 << 20, &mut Names::default());
        }

        #[test]
        fn parsing_straight_to_fields_matches_flattening_the_json_tree(object in json_object()) {
            let payload = serde_json::to_vec(&object).unwrap();
            let mut s = sub();
            s.timestamp_field = None;
            let mut reference = BTreeMap::new();
            // The tree is parsed from the same bytes: serde_json's float parsing need not
            // give back exactly the float that was written.
            let tree: Json = serde_json::from_slice(&payload).unwrap();
            let expected = flatten(tree.as_object().unwrap(), "", 1, &mut reference);
            let got = decode("x", "plant/a/b/telemetry", &payload, 0, &s, 1 << 20, &mut Names::default());
            match (expected, got) {
                (Ok(()), Ok(samples)) => {
                    let mut fields = samples[0].fields.clone();
                    fields.remove("line");
                    proptest::prop_assert_eq!(fields, reference);
                }
                (Err(e), Err(g)) => proptest::prop_assert_eq!(e, g),
                (e, g) => proptest::prop_assert!(false, "reference {e:?}, decoded {g:?}"),
            }
        }

        #[test]
        fn every_scalar_field_survives(values in proptest::collection::btree_map("[a-z]{1,8}", -1_000_000i64..1_000_000, 1..20)) {
            let payload = serde_json::to_vec(&values).unwrap();
            let mut s = sub();
            s.timestamp_field = None;
            let samples = decode("x", "plant/a/b/telemetry", &payload, 0, &s, 1 << 20, &mut Names::default()).unwrap();
            for (k, v) in &values {
                proptest::prop_assert_eq!(&samples[0].fields[k.as_str()], &Value::Int(*v));
            }
        }
    }
}
