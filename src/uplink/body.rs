//! The batch body every HTTP backend receives (documented in the README):
//!
//! ```json
//! {"gateway": "plant-a-gw1", "first_seq": 101, "last_seq": 600, "count": 500,
//!  "records": [{"seq": 101, "source": "local", "device": "pump-3", "ts": 1764340000123,
//!               "fields": {"flow": 12.5, "mode": "auto"}}, ...]}
//! ```
//!
//! gzip-compressed unless disabled. The idempotency key is `<gateway>:<first>-<last>`.

use std::io::Write;

use flate2::Compression;
use flate2::write::GzEncoder;
use serde::Serialize;

use crate::sample::Record;

#[derive(Serialize)]
struct Body<'a> {
    gateway: &'a str,
    first_seq: u64,
    last_seq: u64,
    count: usize,
    records: &'a [Record],
}

pub fn idempotency_key(gateway: &str, first_seq: u64, last_seq: u64) -> String {
    format!("{gateway}:{first_seq}-{last_seq}")
}

/// JSON body for `records` (which must not be empty), optionally gzip-compressed.
pub fn encode(gateway: &str, records: &[Record], gzip: bool) -> Vec<u8> {
    let body = Body {
        gateway,
        first_seq: records.first().map_or(0, |r| r.seq),
        last_seq: records.last().map_or(0, |r| r.seq),
        count: records.len(),
        records,
    };
    let json = serde_json::to_vec(&body).expect("records serialise to JSON");
    if !gzip {
        return json;
    }
    self::gzip(&json)
}

/// gzip at level 1: most of gzip's gain on repetitive text for a fraction of the CPU.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::with_capacity(bytes.len() / 4), Compression::fast());
    encoder
        .write_all(bytes)
        .expect("writing to memory cannot fail");
    encoder.finish().expect("writing to memory cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::{Sample, Value};
    use std::io::Read;

    #[test]
    fn gzip_body_decodes_to_the_documented_shape() {
        let records: Vec<Record> = (5..8)
            .map(|seq| {
                let mut s = Sample::new("src", "dev", 1000 + seq as i64);
                s.fields.insert("v".into(), Value::Int(seq as i64));
                Record::new(seq, s)
            })
            .collect();
        let gz = encode("gw", &records, true);
        let mut json = String::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_string(&mut json)
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["gateway"], "gw");
        assert_eq!(v["first_seq"], 5);
        assert_eq!(v["last_seq"], 7);
        assert_eq!(v["count"], 3);
        assert_eq!(v["records"][2]["fields"]["v"], 7);
        assert_eq!(v["records"][0]["device"], "dev");
        assert_eq!(idempotency_key("gw", 5, 7), "gw:5-7");
    }
}
