//! Commissioning: `tidegate probe modbus` reads a block of registers from one unit and
//! prints every plausible decoding side by side, so the right type and byte order can be
//! seen at a glance; `--scan` lists the unit ids that answer on a line.

use std::fmt::Write as _;
use std::time::Duration;

use super::bus::{Link, Outcome, exception_name};
use super::decode::{ByteOrder, DataType, Decoding, decode_registers};
use super::plan::{ReadRequest, Table};
use crate::config::ModbusLink;
use crate::sample::Value;

/// Reads `count` registers (or bits) of `table` from `start`; returns the printable report.
pub async fn read_block(
    link: ModbusLink,
    unit: u8,
    table: Table,
    start: u16,
    count: u16,
    timeout: Duration,
) -> Result<String, String> {
    let mut link = Link::new("probe".into(), link);
    let request = ReadRequest {
        table,
        start,
        count,
        points: Vec::new(),
    };
    let outcome = link.read(unit, &request, timeout).await;
    link.close().await;
    match outcome {
        Outcome::Registers(words) => Ok(render_registers(unit, table, start, &words)),
        Outcome::Bits(bits) => Ok(render_bits(unit, table, start, &bits)),
        Outcome::Exception(code) => Err(format!(
            "unit {unit} answered with exception {:02X} ({})",
            u8::from(code),
            exception_name(code)
        )),
        Outcome::Timeout => Err(format!(
            "unit {unit} did not answer within {}",
            humantime::format_duration(timeout)
        )),
        Outcome::Transport(e) => Err(e),
    }
}

/// Asks each unit in `units` for holding register 0; lists those that answer at all (an
/// exception is an answer: the unit is there).
pub async fn scan(
    link: ModbusLink,
    units: std::ops::RangeInclusive<u8>,
    timeout: Duration,
) -> String {
    let mut link = Link::new("probe".into(), link);
    let request = ReadRequest {
        table: Table::HoldingRegister,
        start: 0,
        count: 1,
        points: Vec::new(),
    };
    let mut out = String::new();
    let mut found = 0;
    for unit in units.clone() {
        match link.read(unit, &request, timeout).await {
            Outcome::Registers(words) => {
                found += 1;
                let _ = writeln!(
                    out,
                    "unit {unit:>3}: answers (holding register 0 = {})",
                    words[0]
                );
            }
            // A gateway saying nobody answered behind it: the unit is absent.
            Outcome::Exception(
                tokio_modbus::ExceptionCode::GatewayPathUnavailable
                | tokio_modbus::ExceptionCode::GatewayTargetDevice,
            ) => {}
            Outcome::Exception(code) => {
                found += 1;
                let _ = writeln!(
                    out,
                    "unit {unit:>3}: answers, with exception {:02X} ({}) for holding register 0",
                    u8::from(code),
                    exception_name(code)
                );
            }
            Outcome::Bits(_) | Outcome::Timeout => {}
            Outcome::Transport(e) => {
                let _ = writeln!(out, "unit {unit:>3}: {e}");
            }
        }
    }
    link.close().await;
    let _ = writeln!(
        out,
        "{found} of {} unit ids answered (timeout {} each)",
        units.count(),
        humantime::format_duration(timeout)
    );
    out
}

fn show(value: Result<Value, super::decode::DecodeError>) -> String {
    match value {
        Ok(Value::Float(f)) => readable(f),
        Ok(v) => v.to_string(),
        Err(_) => "-".into(),
    }
}

/// A 32-bit float at its own precision; scientific notation where plain digits would
/// run across the screen (a wrong byte order gives such values).
fn show_f32(value: Result<Value, super::decode::DecodeError>) -> String {
    match value {
        Ok(Value::Float(f)) => {
            let single = f as f32;
            if f != 0.0 && !(1e-4..1e9).contains(&f.abs()) {
                format!("{single:e}")
            } else {
                format!("{single}")
            }
        }
        other => show(other),
    }
}

fn readable(f: f64) -> String {
    if f != 0.0 && !(1e-4..1e12).contains(&f.abs()) {
        format!("{f:e}")
    } else {
        format!("{f}")
    }
}

/// The raw words and their decodings. Pure, so it is tested without a device.
pub fn render_registers(unit: u8, table: Table, start: u16, words: &[u16]) -> String {
    let mut out = String::new();
    let prefix = table.notation_prefix();
    let _ = writeln!(
        out,
        "unit {unit}, {} {}..={}:",
        table,
        start,
        u32::from(start) + words.len() as u32 - 1
    );
    let _ = writeln!(
        out,
        "{:>6} {:>7} {:>6} {:>6} {:>6}  ascii",
        "addr", "notation", "hex", "u16", "i16"
    );
    for (i, word) in words.iter().enumerate() {
        let address = u32::from(start) + i as u32;
        let ascii: String = word
            .to_be_bytes()
            .iter()
            .map(|b| {
                if b.is_ascii_graphic() || *b == b' ' {
                    *b as char
                } else {
                    '.'
                }
            })
            .collect();
        let _ = writeln!(
            out,
            "{address:>6} {:>7} {word:>#6x} {word:>6} {:>6}  {ascii}",
            format!("{prefix}{:04}", address + 1),
            *word as i16
        );
    }
    if words.len() >= 2 {
        let _ = writeln!(out, "\n32-bit values starting at each address:");
        let _ = writeln!(
            out,
            "{:>6} {:>5} {:>12} {:>12} {:>16}",
            "addr", "order", "u32", "i32", "f32"
        );
        for i in 0..words.len() - 1 {
            for order in ByteOrder::ALL {
                let d = |t| Decoding {
                    order,
                    ..Decoding::plain(t)
                };
                let pair = &words[i..i + 2];
                let _ = writeln!(
                    out,
                    "{:>6} {:>5} {:>12} {:>12} {:>16}",
                    u32::from(start) + i as u32,
                    format!("{order:?}"),
                    show(decode_registers(pair, &d(DataType::U32))),
                    show(decode_registers(pair, &d(DataType::I32))),
                    show_f32(decode_registers(pair, &d(DataType::F32))),
                );
            }
        }
    }
    if words.len() >= 4 {
        let _ = writeln!(out, "\n64-bit values starting at each address:");
        let _ = writeln!(
            out,
            "{:>6} {:>5} {:>21} {:>24}",
            "addr", "order", "i64", "f64"
        );
        for i in 0..words.len() - 3 {
            for order in ByteOrder::ALL {
                let d = |t| Decoding {
                    order,
                    ..Decoding::plain(t)
                };
                let quad = &words[i..i + 4];
                let _ = writeln!(
                    out,
                    "{:>6} {:>5} {:>21} {:>24}",
                    u32::from(start) + i as u32,
                    format!("{order:?}"),
                    show(decode_registers(quad, &d(DataType::I64))),
                    show(decode_registers(quad, &d(DataType::F64))),
                );
            }
        }
    }
    let text = show(decode_registers(words, &Decoding::plain(DataType::String)));
    let _ = writeln!(out, "\nas text (2 characters per register): {text}");
    out
}

pub fn render_bits(unit: u8, table: Table, start: u16, bits: &[bool]) -> String {
    let mut out = format!(
        "unit {unit}, {table} {}..={}:\n",
        start,
        u32::from(start) + bits.len() as u32 - 1
    );
    for (i, bit) in bits.iter().enumerate() {
        let address = u32::from(start) + i as u32;
        let _ = writeln!(
            out,
            "{address:>6} {:>7} {}",
            format!("{}{:04}", table.notation_prefix(), address + 1),
            u8::from(*bit)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_float_shows_up_in_its_byte_order() {
        // 1.5f32 = 0x3FC00000, sent word-swapped.
        let report = render_registers(1, Table::HoldingRegister, 0, &[0x0000, 0x3FC0]);
        let cdab = report
            .lines()
            .find(|l| l.contains(" CDAB ") && l.trim_start().starts_with('0'))
            .unwrap();
        assert!(cdab.trim_end().ends_with("1.5"), "{cdab}");
        assert!(report.contains("40001"), "{report}");
    }
}
