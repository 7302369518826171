//! A JSON payload parsed straight into flat fields: nested objects become `a.b`, arrays
//! `a.0`, `a.1`, `null` is left out. No `serde_json::Value` tree is built on the way;
//! only the top-level values of the timestamp and device fields are kept as JSON as
//! well, for what they mean. A limit crossed (depth, fields, samples) or a payload that
//! is not an object or an array of objects ends the parse with its [`DecodeError`].

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};

use serde::de::{DeserializeSeed, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::Value as Json;

use super::decode::{DecodeError, MAX_DEPTH, MAX_FIELDS, MAX_SAMPLES_PER_MESSAGE};
use crate::sample::{FieldName, Value};

/// One object of a payload.
pub struct Object {
    pub fields: BTreeMap<FieldName, Value>,
    /// The top-level values of the fields asked for as JSON (timestamp, device).
    pub kept: serde_json::Map<String, Json>,
}

/// The field names a source has seen, handed out shared: a device sends the same names in
/// every message, and a name found here costs a counter increment instead of an
/// allocation and a copy. Bounded, so that payloads inventing names cannot grow it: past
/// [`Names::MAX`] new names are allocated each time, as if there were no cache.
#[derive(Debug, Default)]
pub struct Names {
    known: HashSet<FieldName>,
}

impl Names {
    pub const MAX: usize = 4096;

    pub fn get(&mut self, name: &str) -> FieldName {
        if let Some(known) = self.known.get(name) {
            return known.clone();
        }
        let name = FieldName::from(name);
        if self.known.len() < Self::MAX {
            self.known.insert(name.clone());
        }
        name
    }
}

/// Parses `payload`; `keep` names the top-level fields also wanted as JSON.
pub fn objects(
    payload: &[u8],
    keep: [Option<&str>; 2],
    names: &mut Names,
) -> Result<Vec<Object>, DecodeError> {
    let mut failure = None;
    let mut deserializer = serde_json::Deserializer::from_slice(payload);
    let parsed = Shape {
        top: true,
        keep,
        names,
        failure: &mut failure,
    }
    .deserialize(&mut deserializer)
    .and_then(|objects| deserializer.end().map(|()| objects));
    match (parsed, failure) {
        (_, Some(failure)) => Err(failure),
        (Err(e), None) => Err(DecodeError::NotJson(e.to_string())),
        (Ok(objects), None) => Ok(objects),
    }
}

/// Records why the parse stops; the deserializer's own error then only says that it did.
fn stop<E: serde::de::Error>(failure: &mut Option<DecodeError>, error: DecodeError) -> E {
    *failure = Some(error);
    E::custom("payload refused")
}

/// The payload (`top`): an object, or an array of objects; or one element of that array,
/// which must be an object.
struct Shape<'a> {
    top: bool,
    keep: [Option<&'a str>; 2],
    names: &'a mut Names,
    failure: &'a mut Option<DecodeError>,
}

impl Shape<'_> {
    fn refuse<E: serde::de::Error>(self, kind: &'static str) -> Result<Vec<Object>, E> {
        Err(stop(self.failure, DecodeError::NotObject(kind)))
    }
}

impl<'de> DeserializeSeed<'de> for Shape<'_> {
    type Value = Vec<Object>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<Object>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Shape<'_> {
    type Value = Vec<Object>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object or an array of objects")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<Object>, A::Error> {
        let mut object = Object {
            fields: BTreeMap::new(),
            kept: serde_json::Map::new(),
        };
        // Borrowed from the payload unless it holds escapes.
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            let flatten = Flatten {
                name: key,
                depth: 1,
                out: &mut object.fields,
                names: &mut *self.names,
                failure: &mut *self.failure,
            };
            if self.keep.contains(&Some(flatten.name.as_ref())) {
                // Rare and small: parsed whole, then flattened like any other field.
                let value: Json = map.next_value()?;
                let key = flatten.name.to_string();
                flatten.deserialize(&value).map_err(A::Error::custom)?;
                object.kept.insert(key, value);
            } else {
                map.next_value_seed(flatten)?;
            }
        }
        Ok(vec![object])
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Object>, A::Error> {
        if !self.top {
            return self.refuse("an array");
        }
        let mut objects = Vec::new();
        loop {
            let element = Shape {
                top: false,
                keep: self.keep,
                names: &mut *self.names,
                failure: &mut *self.failure,
            };
            let Some(object) = seq.next_element_seed(element)? else {
                return Ok(objects);
            };
            if objects.len() == MAX_SAMPLES_PER_MESSAGE {
                return Err(stop(self.failure, DecodeError::TooManySamples));
            }
            objects.extend(object);
        }
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Vec<Object>, E> {
        self.refuse("a boolean")
    }
    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Vec<Object>, E> {
        self.refuse("a number")
    }
    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Vec<Object>, E> {
        self.refuse("a number")
    }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Vec<Object>, E> {
        self.refuse("a number")
    }
    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Vec<Object>, E> {
        self.refuse("a string")
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<Vec<Object>, E> {
        self.refuse("null")
    }
}

/// One value, flattened into `out` under `name`.
struct Flatten<'a, 'k> {
    name: Cow<'k, str>,
    depth: usize,
    out: &'a mut BTreeMap<FieldName, Value>,
    names: &'a mut Names,
    failure: &'a mut Option<DecodeError>,
}

impl Flatten<'_, '_> {
    fn leaf<E: serde::de::Error>(self, value: Value) -> Result<(), E> {
        if self.out.len() >= MAX_FIELDS {
            return Err(stop(self.failure, DecodeError::TooManyFields));
        }
        self.out.insert(self.names.get(&self.name), value);
        Ok(())
    }

    /// An object or array here would be one level too deep (even an empty one).
    fn too_deep<E: serde::de::Error>(&mut self) -> Result<(), E> {
        if self.depth + 1 > MAX_DEPTH {
            return Err(stop(self.failure, DecodeError::TooDeep));
        }
        Ok(())
    }

    /// The flattener of a member (`key`) of this object or array, one level down.
    fn member(&mut self, key: impl std::fmt::Display) -> Flatten<'_, 'static> {
        Flatten {
            name: Cow::Owned(format!("{}.{key}", self.name)),
            depth: self.depth + 1,
            out: &mut *self.out,
            names: &mut *self.names,
            failure: &mut *self.failure,
        }
    }
}

impl<'de> DeserializeSeed<'de> for Flatten<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Flatten<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<(), E> {
        self.leaf(Value::Bool(v))
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
        self.leaf(Value::Int(v))
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
        // Above i64::MAX becomes a float, as everywhere else.
        match i64::try_from(v) {
            Ok(v) => self.leaf(Value::Int(v)),
            Err(_) => self.leaf(Value::Float(v as f64)),
        }
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        self.leaf(Value::Float(v))
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
        self.leaf(Value::Text(v.to_string()))
    }
    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<(), E> {
        self.leaf(Value::Text(v))
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        Ok(()) // null: no value
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        self.too_deep()?;
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            map.next_value_seed(self.member(key))?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        self.too_deep()?;
        let mut i = 0usize;
        while seq.next_element_seed(self.member(i))?.is_some() {
            i += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_seen_before_are_shared_and_the_cache_is_bounded() {
        let mut names = Names::default();
        let first = objects(
            br#"{"flow": 1, "motor": {"rpm": 2}}"#,
            [None, None],
            &mut names,
        )
        .unwrap();
        let second = objects(
            br#"{"flow": 3, "motor": {"rpm": 4}}"#,
            [None, None],
            &mut names,
        )
        .unwrap();
        for name in ["flow", "motor.rpm"] {
            let (a, _) = first[0].fields.get_key_value(name).unwrap();
            let (b, _) = second[0].fields.get_key_value(name).unwrap();
            assert!(FieldName::ptr_eq(a, b), "{name} is shared");
        }
        // A name with an escape is unescaped first, then found like any other.
        let escaped = objects(br#"{"fl\u006fw": 5}"#, [None, None], &mut names).unwrap();
        let (c, _) = escaped[0].fields.get_key_value("flow").unwrap();
        assert!(FieldName::ptr_eq(
            c,
            first[0].fields.get_key_value("flow").unwrap().0
        ));

        for i in 0..Names::MAX + 10 {
            names.get(&format!("invented-{i}"));
        }
        assert_eq!(names.known.len(), Names::MAX);
        assert_eq!(&*names.get("one more"), "one more");
        assert_eq!(names.known.len(), Names::MAX);
    }
}
