//! The on-disk record format. Every value starts with a format version and a CRC32 of
//! the body, so that a damaged record is detected (and quarantined) rather than sent,
//! and a future format can be read beside this one.
//!
//! ```text
//! byte 0      format version (1)
//! bytes 1..5  CRC32 (IEEE) of the body, big-endian
//! bytes 5..   body: the sample as JSON
//! ```

use crate::sample::Sample;

pub const FORMAT_V1: u8 = 1;
const HEADER_LEN: usize = 5;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CorruptRecord {
    #[error("record is {0} bytes, shorter than its header")]
    Truncated(usize),
    #[error("unknown record format version {0}")]
    UnknownVersion(u8),
    #[error("checksum mismatch (stored {stored:08x}, computed {computed:08x})")]
    Checksum { stored: u32, computed: u32 },
    #[error("body does not decode: {0}")]
    Body(String),
}

pub fn encode(sample: &Sample) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.push(FORMAT_V1);
    out.extend_from_slice(&[0; 4]);
    serde_json::to_writer(&mut out, sample).expect("a sample always serialises to JSON");
    let crc = crc32fast::hash(&out[HEADER_LEN..]);
    out[1..HEADER_LEN].copy_from_slice(&crc.to_be_bytes());
    out
}

pub fn decode(bytes: &[u8]) -> Result<Sample, CorruptRecord> {
    if bytes.len() < HEADER_LEN {
        return Err(CorruptRecord::Truncated(bytes.len()));
    }
    if bytes[0] != FORMAT_V1 {
        return Err(CorruptRecord::UnknownVersion(bytes[0]));
    }
    let stored = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    let body = &bytes[HEADER_LEN..];
    let computed = crc32fast::hash(body);
    if stored != computed {
        return Err(CorruptRecord::Checksum { stored, computed });
    }
    serde_json::from_slice(body).map_err(|e| CorruptRecord::Body(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::Value;

    fn sample() -> Sample {
        let mut s = Sample::new("src", "dev", 1);
        s.fields.insert("x".into(), Value::Float(1.5));
        s
    }

    #[test]
    fn round_trips() {
        assert_eq!(decode(&encode(&sample())).unwrap(), sample());
    }

    #[test]
    fn any_flipped_byte_is_detected() {
        let good = encode(&sample());
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x40;
            assert!(decode(&bad).is_err(), "flip at byte {i} went unnoticed");
        }
        assert_eq!(decode(&good[..3]), Err(CorruptRecord::Truncated(3)));
    }
}
