//! Register decoding: raw 16-bit words (or bits) → typed values. Pure and exhaustively
//! tested against a reference decoder built from the byte layout the Modbus convention
//! documents.
//!
//! Byte order names describe where the bytes of the value sit on the wire, value byte `A`
//! being the most significant: `ABCD` is big-endian (the Modbus default), `CDAB` swaps
//! the words, `BADC` swaps the bytes inside each word, `DCBA` is fully little-endian. For
//! 64-bit values the same two rules (word order reversed, bytes swapped in each word)
//! apply across four words.

use serde::Deserialize;

use crate::sample::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataType {
    Bool,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
    String,
}

impl DataType {
    /// Registers the type occupies (`string` takes its configured length).
    pub fn registers(self, string_len: u16) -> u16 {
        match self {
            DataType::Bool | DataType::U16 | DataType::I16 => 1,
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
            DataType::U64 | DataType::I64 | DataType::F64 => 4,
            DataType::String => string_len,
        }
    }

    pub fn is_integer(self) -> bool {
        matches!(
            self,
            DataType::U16
                | DataType::I16
                | DataType::U32
                | DataType::I32
                | DataType::U64
                | DataType::I64
        )
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum ByteOrder {
    #[default]
    ABCD,
    CDAB,
    BADC,
    DCBA,
}

impl ByteOrder {
    pub const ALL: [ByteOrder; 4] = [
        ByteOrder::ABCD,
        ByteOrder::CDAB,
        ByteOrder::BADC,
        ByteOrder::DCBA,
    ];

    fn words_reversed(self) -> bool {
        matches!(self, ByteOrder::CDAB | ByteOrder::DCBA)
    }

    fn bytes_swapped(self) -> bool {
        matches!(self, ByteOrder::BADC | ByteOrder::DCBA)
    }
}

/// The value's bytes, most significant first, from its registers as they came.
pub fn value_bytes(words: &[u16], order: ByteOrder) -> Vec<u8> {
    let mut ordered: Vec<u16> = words.to_vec();
    if order.words_reversed() {
        ordered.reverse();
    }
    let mut bytes = Vec::with_capacity(words.len() * 2);
    for word in ordered {
        let [hi, lo] = word.to_be_bytes();
        if order.bytes_swapped() {
            bytes.extend_from_slice(&[lo, hi]);
        } else {
            bytes.extend_from_slice(&[hi, lo]);
        }
    }
    bytes
}

/// How to turn registers into a value.
#[derive(Clone, Debug, PartialEq)]
pub struct Decoding {
    pub data_type: DataType,
    pub order: ByteOrder,
    /// For `bool` from a register: which bit (0 = least significant).
    pub bit: Option<u8>,
    pub scale: f64,
    pub offset: f64,
}

impl Decoding {
    pub fn plain(data_type: DataType) -> Self {
        Decoding {
            data_type,
            order: ByteOrder::ABCD,
            bit: None,
            scale: 1.0,
            offset: 0.0,
        }
    }

    fn scaled(&self) -> bool {
        self.scale != 1.0 || self.offset != 0.0
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("expected {expected} registers, got {got}")]
    Length { expected: usize, got: usize },
    #[error("value is not a finite number")]
    NotFinite,
}

/// Decodes a value from its registers (exactly as many as the type takes).
pub fn decode_registers(words: &[u16], decoding: &Decoding) -> Result<Value, DecodeError> {
    let expected = decoding.data_type.registers(words.len() as u16) as usize;
    if words.len() != expected || words.is_empty() {
        return Err(DecodeError::Length {
            expected,
            got: words.len(),
        });
    }
    if decoding.data_type == DataType::Bool {
        let bit = decoding.bit.unwrap_or(0);
        return Ok(Value::Bool(words[0] >> bit & 1 == 1));
    }
    let bytes = value_bytes(words, decoding.order);
    let raw: Raw = match decoding.data_type {
        DataType::U16 => Raw::Int(i128::from(u16::from_be_bytes([bytes[0], bytes[1]]))),
        DataType::I16 => Raw::Int(i128::from(i16::from_be_bytes([bytes[0], bytes[1]]))),
        DataType::U32 => Raw::Int(i128::from(u32::from_be_bytes(
            bytes[..4].try_into().expect("4 bytes"),
        ))),
        DataType::I32 => Raw::Int(i128::from(i32::from_be_bytes(
            bytes[..4].try_into().expect("4 bytes"),
        ))),
        DataType::U64 => Raw::Int(i128::from(u64::from_be_bytes(
            bytes[..8].try_into().expect("8 bytes"),
        ))),
        DataType::I64 => Raw::Int(i128::from(i64::from_be_bytes(
            bytes[..8].try_into().expect("8 bytes"),
        ))),
        DataType::F32 => Raw::Float(f32_as_decimal(f32::from_be_bytes(
            bytes[..4].try_into().expect("4 bytes"),
        ))),
        DataType::F64 => Raw::Float(f64::from_be_bytes(bytes[..8].try_into().expect("8 bytes"))),
        DataType::String => {
            let text: String = bytes
                .iter()
                .take_while(|b| **b != 0)
                .map(|b| {
                    if b.is_ascii() && !b.is_ascii_control() {
                        *b as char
                    } else {
                        '?'
                    }
                })
                .collect();
            return Ok(Value::Text(text.trim_end().to_string()));
        }
        DataType::Bool => unreachable!("handled above"),
    };
    match raw {
        Raw::Int(i) if !decoding.scaled() => Ok(i64::try_from(i)
            .map(Value::Int)
            .unwrap_or(Value::Float(i as f64))),
        Raw::Int(i) => finite(i as f64 * decoding.scale + decoding.offset),
        Raw::Float(f) => finite(f * decoding.scale + decoding.offset),
    }
}

/// A 32-bit float as the f64 nearest its shortest decimal form: a meter's 21.7 stays 21.7
/// rather than becoming 21.700000762939453 on the way to the backend.
fn f32_as_decimal(value: f32) -> f64 {
    if !value.is_finite() {
        return f64::from(value);
    }
    value.to_string().parse().unwrap_or(f64::from(value))
}

enum Raw {
    Int(i128),
    Float(f64),
}

fn finite(x: f64) -> Result<Value, DecodeError> {
    if x.is_finite() {
        Ok(Value::Float(x))
    } else {
        Err(DecodeError::NotFinite)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Reference encoder: value bytes (big-endian) → registers in the given order. Built
    /// from the definition in the module docs, independently of `value_bytes`.
    fn encode(be: &[u8], order: ByteOrder) -> Vec<u16> {
        // The wire position of each value byte, written as the order pattern extended to
        // the value's width: words reversed and/or bytes swapped within words.
        let n = be.len();
        let mut wire = vec![0u8; n];
        for (value_pos, byte) in be.iter().enumerate() {
            let word = value_pos / 2;
            let within = value_pos % 2;
            let words = n / 2;
            let wire_word = if matches!(order, ByteOrder::CDAB | ByteOrder::DCBA) {
                words - 1 - word
            } else {
                word
            };
            let wire_within = if matches!(order, ByteOrder::BADC | ByteOrder::DCBA) {
                1 - within
            } else {
                within
            };
            wire[wire_word * 2 + wire_within] = *byte;
        }
        wire.chunks(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect()
    }

    fn dec(t: DataType, order: ByteOrder) -> Decoding {
        Decoding {
            order,
            ..Decoding::plain(t)
        }
    }

    #[test]
    fn documented_examples() {
        // 123456789 = 0x075B_CD15.
        let d = |o| {
            decode_registers(
                &encode(&123_456_789u32.to_be_bytes(), o),
                &dec(DataType::U32, o),
            )
            .unwrap()
        };
        for order in ByteOrder::ALL {
            assert_eq!(d(order), Value::Int(123_456_789), "{order:?}");
        }
        assert_eq!(
            encode(&0x075B_CD15u32.to_be_bytes(), ByteOrder::ABCD),
            vec![0x075B, 0xCD15]
        );
        assert_eq!(
            encode(&0x075B_CD15u32.to_be_bytes(), ByteOrder::CDAB),
            vec![0xCD15, 0x075B]
        );
        assert_eq!(
            encode(&0x075B_CD15u32.to_be_bytes(), ByteOrder::BADC),
            vec![0x5B07, 0x15CD]
        );
        assert_eq!(
            encode(&0x075B_CD15u32.to_be_bytes(), ByteOrder::DCBA),
            vec![0x15CD, 0x5B07]
        );
        // 1.5f32 = 0x3FC0_0000.
        assert_eq!(
            decode_registers(&[0x3FC0, 0x0000], &dec(DataType::F32, ByteOrder::ABCD)).unwrap(),
            Value::Float(1.5)
        );
        assert_eq!(
            decode_registers(&[0x0000, 0x3FC0], &dec(DataType::F32, ByteOrder::CDAB)).unwrap(),
            Value::Float(1.5)
        );
        assert_eq!(
            decode_registers(&[0xFFFE], &dec(DataType::I16, ByteOrder::ABCD)).unwrap(),
            Value::Int(-2)
        );
        assert_eq!(
            decode_registers(&[0xFFFE], &dec(DataType::U16, ByteOrder::ABCD)).unwrap(),
            Value::Int(65534)
        );
    }

    #[test]
    fn bits_scale_and_strings() {
        let bit3 = Decoding {
            bit: Some(3),
            ..Decoding::plain(DataType::Bool)
        };
        assert_eq!(
            decode_registers(&[0b1000], &bit3).unwrap(),
            Value::Bool(true)
        );
        assert_eq!(
            decode_registers(&[0b0111], &bit3).unwrap(),
            Value::Bool(false)
        );
        let scaled = Decoding {
            scale: 0.1,
            offset: -40.0,
            ..Decoding::plain(DataType::I16)
        };
        let Value::Float(v) = decode_registers(&[650], &scaled).unwrap() else {
            panic!()
        };
        assert!((v - 25.0).abs() < 1e-9);
        let text = decode_registers(
            &[0x5055, 0x4D50, 0x2D37, 0x0000],
            &Decoding::plain(DataType::String),
        )
        .unwrap();
        assert_eq!(text, Value::Text("PUMP-7".into()));
        let swapped = dec(DataType::String, ByteOrder::BADC);
        assert_eq!(
            decode_registers(&[0x5550, 0x504D], &swapped).unwrap(),
            Value::Text("PUMP".into())
        );
        assert!(decode_registers(&[1], &dec(DataType::U32, ByteOrder::ABCD)).is_err());
        assert_eq!(
            decode_registers(&[0x7FC0, 0x0000], &dec(DataType::F32, ByteOrder::ABCD)),
            Err(DecodeError::NotFinite)
        );
    }

    fn order() -> impl Strategy<Value = ByteOrder> {
        prop::sample::select(ByteOrder::ALL.to_vec())
    }

    proptest! {
        #[test]
        fn u32_i32_f32_round_trip(x: u32, o in order()) {
            let words = encode(&x.to_be_bytes(), o);
            prop_assert_eq!(decode_registers(&words, &dec(DataType::U32, o)).unwrap(), Value::Int(i64::from(x)));
            prop_assert_eq!(decode_registers(&words, &dec(DataType::I32, o)).unwrap(), Value::Int(i64::from(x as i32)));
            let f = f32::from_bits(x);
            match decode_registers(&words, &dec(DataType::F32, o)) {
                Ok(Value::Float(v)) => prop_assert_eq!(v as f32, f),
                Err(DecodeError::NotFinite) => prop_assert!(!f.is_finite()),
                other => prop_assert!(false, "{:?}", other),
            }
        }

        #[test]
        fn u64_i64_f64_round_trip(x: u64, o in order()) {
            let words = encode(&x.to_be_bytes(), o);
            let as_i64 = x as i64;
            prop_assert_eq!(decode_registers(&words, &dec(DataType::I64, o)).unwrap(), Value::Int(as_i64));
            let expected_u64 = i64::try_from(x).map(Value::Int).unwrap_or(Value::Float(x as f64));
            prop_assert_eq!(decode_registers(&words, &dec(DataType::U64, o)).unwrap(), expected_u64);
            let f = f64::from_bits(x);
            match decode_registers(&words, &dec(DataType::F64, o)) {
                Ok(Value::Float(v)) => prop_assert_eq!(v, f),
                Err(DecodeError::NotFinite) => prop_assert!(!f.is_finite()),
                other => prop_assert!(false, "{:?}", other),
            }
        }

        #[test]
        fn u16_i16_round_trip(x: u16, o in order()) {
            let words = encode(&x.to_be_bytes(), o);
            prop_assert_eq!(decode_registers(&words, &dec(DataType::U16, o)).unwrap(), Value::Int(i64::from(x)));
            prop_assert_eq!(decode_registers(&words, &dec(DataType::I16, o)).unwrap(), Value::Int(i64::from(x as i16)));
        }
    }
}
