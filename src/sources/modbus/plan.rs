//! Read planning: a device's points → the fewest read requests that cover them. Pure.
//!
//! Points of one table are sorted by address and merged into one request while the gap
//! between them is at most `max_gap` and the request stays within the per-request limit
//! (125 registers or 2000 bits by the protocol, lower for fussy hardware). Points may
//! overlap (several bits of one register, a u32 and its low word).

use std::fmt;

use super::decode::{Decoding, decode_registers};
use crate::sample::{Quality, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    Coil,
    DiscreteInput,
    InputRegister,
    HoldingRegister,
}

impl Table {
    pub fn is_bits(self) -> bool {
        matches!(self, Table::Coil | Table::DiscreteInput)
    }

    /// The Modbus function code that reads this table.
    pub fn function_code(self) -> u8 {
        match self {
            Table::Coil => 1,
            Table::DiscreteInput => 2,
            Table::HoldingRegister => 3,
            Table::InputRegister => 4,
        }
    }

    /// Leading digit of the conventional 1-based notation (`40001` is holding register 0).
    pub fn notation_prefix(self) -> u32 {
        match self {
            Table::Coil => 0,
            Table::DiscreteInput => 1,
            Table::InputRegister => 3,
            Table::HoldingRegister => 4,
        }
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Table::Coil => "coil",
            Table::DiscreteInput => "discrete input",
            Table::InputRegister => "input register",
            Table::HoldingRegister => "holding register",
        })
    }
}

/// One configured value of a device.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    pub name: crate::sample::FieldName,
    pub table: Table,
    /// 0-based protocol address.
    pub address: u16,
    pub decoding: Decoding,
    /// Registers a `string` occupies.
    pub string_len: u16,
    pub unit: Option<String>,
}

impl Point {
    /// Registers (or bits) the point covers.
    pub fn width(&self) -> u16 {
        if self.table.is_bits() {
            1
        } else {
            self.decoding.data_type.registers(self.string_len)
        }
    }

    /// One past the last address covered. u32 so that a point ending at 65535 fits.
    pub fn end(&self) -> u32 {
        u32::from(self.address) + u32::from(self.width())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlanLimits {
    pub max_registers: u16,
    pub max_bits: u16,
    pub max_gap: u16,
}

impl Default for PlanLimits {
    fn default() -> Self {
        PlanLimits {
            max_registers: 125,
            max_bits: 2000,
            max_gap: 0,
        }
    }
}

/// One read request and the points it carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadRequest {
    pub table: Table,
    pub start: u16,
    pub count: u16,
    /// Indices into the device's points.
    pub points: Vec<usize>,
}

impl fmt::Display for ReadRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = if self.table.is_bits() {
            "bit"
        } else {
            "register"
        };
        write!(
            f,
            "FC{:02} {} {}..={} ({}, {})",
            self.table.function_code(),
            self.table,
            self.start,
            u32::from(self.start) + u32::from(self.count) - 1,
            crate::config::units::plural(usize::from(self.count), unit),
            crate::config::units::plural(self.points.len(), "point")
        )
    }
}

/// Plans the requests for `points`. A point wider than the limit itself is an error the
/// config validation reports first; here it simply gets a request of its own.
pub fn plan(points: &[Point], limits: PlanLimits) -> Vec<ReadRequest> {
    let mut order: Vec<usize> = (0..points.len()).collect();
    order.sort_by_key(|&i| (points[i].table, points[i].address, points[i].end()));
    let mut requests: Vec<ReadRequest> = Vec::new();
    for i in order {
        let point = &points[i];
        let limit = u32::from(if point.table.is_bits() {
            limits.max_bits
        } else {
            limits.max_registers
        });
        if let Some(current) = requests.last_mut()
            && current.table == point.table
        {
            let start = u32::from(current.start);
            let end = start + u32::from(current.count);
            let gap = u32::from(point.address).saturating_sub(end);
            let new_end = end.max(point.end());
            if gap <= u32::from(limits.max_gap) && new_end - start <= limit {
                current.count = (new_end - start) as u16;
                current.points.push(i);
                continue;
            }
        }
        requests.push(ReadRequest {
            table: point.table,
            start: point.address,
            count: point.width(),
            points: vec![i],
        });
    }
    requests
}

/// The values a request's answer carries, point by point.
pub enum Answer<'a> {
    Registers(&'a [u16]),
    Bits(&'a [bool]),
}

/// Extracts each point of `request` from its answer: `(point index, value or bad quality)`.
pub fn extract(
    points: &[Point],
    request: &ReadRequest,
    answer: Answer<'_>,
) -> Vec<(usize, Result<Value, Quality>)> {
    request
        .points
        .iter()
        .map(|&i| {
            let point = &points[i];
            let offset = usize::from(point.address - request.start);
            let width = usize::from(point.width());
            let value = match &answer {
                Answer::Bits(bits) => bits
                    .get(offset)
                    .map(|b| Value::Bool(*b))
                    .ok_or_else(short_answer),
                Answer::Registers(words) => match words.get(offset..offset + width) {
                    Some(slice) => {
                        decode_registers(slice, &point.decoding).map_err(|e| Quality::Bad {
                            reason: crate::sample::BadReason::Decode,
                            detail: e.to_string(),
                        })
                    }
                    None => Err(short_answer()),
                },
            };
            (i, value)
        })
        .collect()
}

fn short_answer() -> Quality {
    Quality::Bad {
        reason: crate::sample::BadReason::Decode,
        detail: "the device answered with fewer values than requested".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::decode::DataType;
    use super::*;

    fn point(name: &str, table: Table, address: u16, t: DataType) -> Point {
        Point {
            name: name.into(),
            table,
            address,
            decoding: Decoding::plain(t),
            string_len: 4,
            unit: None,
        }
    }

    #[test]
    fn contiguous_points_share_a_request_per_table() {
        let points = vec![
            point("a", Table::HoldingRegister, 0, DataType::F32),
            point("b", Table::HoldingRegister, 2, DataType::F32),
            point("c", Table::InputRegister, 0, DataType::U16),
            point("d", Table::HoldingRegister, 100, DataType::U16),
            point("run", Table::Coil, 5, DataType::Bool),
            point("e", Table::HoldingRegister, 4, DataType::U16),
        ];
        let requests = plan(&points, PlanLimits::default());
        let summary: Vec<(Table, u16, u16, Vec<usize>)> = requests
            .iter()
            .map(|r| (r.table, r.start, r.count, r.points.clone()))
            .collect();
        assert_eq!(
            summary,
            vec![
                (Table::Coil, 5, 1, vec![4]),
                (Table::InputRegister, 0, 1, vec![2]),
                (Table::HoldingRegister, 0, 5, vec![0, 1, 5]),
                (Table::HoldingRegister, 100, 1, vec![3]),
            ]
        );
    }

    #[test]
    fn gaps_are_bridged_up_to_max_gap_and_limits_split_requests() {
        let points = vec![
            point("a", Table::HoldingRegister, 0, DataType::U16),
            point("b", Table::HoldingRegister, 5, DataType::U16),
        ];
        assert_eq!(plan(&points, PlanLimits::default()).len(), 2);
        let bridged = plan(
            &points,
            PlanLimits {
                max_gap: 4,
                ..Default::default()
            },
        );
        assert_eq!((bridged.len(), bridged[0].count), (1, 6));
        let many: Vec<Point> = (0..130)
            .map(|i| point(&format!("p{i}"), Table::HoldingRegister, i, DataType::U16))
            .collect();
        let split = plan(&many, PlanLimits::default());
        assert_eq!(
            split.iter().map(|r| r.count).collect::<Vec<_>>(),
            vec![125, 5]
        );
        let fussy = plan(
            &many,
            PlanLimits {
                max_registers: 16,
                ..Default::default()
            },
        );
        assert!(fussy.iter().all(|r| r.count <= 16));
        assert_eq!(fussy.iter().map(|r| r.points.len()).sum::<usize>(), 130);
    }

    #[test]
    fn overlapping_points_and_extraction() {
        let mut bit = point("bit3", Table::HoldingRegister, 1, DataType::Bool);
        bit.decoding.bit = Some(3);
        let points = vec![point("wide", Table::HoldingRegister, 0, DataType::U32), bit];
        let requests = plan(&points, PlanLimits::default());
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].count, 2);
        let values = extract(&points, &requests[0], Answer::Registers(&[0x0001, 0x0008]));
        assert_eq!(values[0], (0, Ok(Value::Int(0x0001_0008))));
        assert_eq!(values[1], (1, Ok(Value::Bool(true))));
        let short = extract(&points, &requests[0], Answer::Registers(&[1]));
        assert!(short.iter().all(|(_, v)| v.is_err()));
    }

    proptest::proptest! {
        #[test]
        fn every_point_is_covered_once_and_requests_respect_the_limits(
            specs in proptest::collection::vec((0u16..600, 0u8..3, 0u8..4), 1..60),
            max_gap in 0u16..20,
            max_registers in 4u16..=125,
        ) {
            let tables = [Table::HoldingRegister, Table::InputRegister, Table::Coil];
            let types = [DataType::U16, DataType::F32, DataType::F64, DataType::Bool];
            let points: Vec<Point> = specs
                .iter()
                .enumerate()
                .map(|(i, (address, table, t))| {
                    let table = tables[*table as usize];
                    let t = if table.is_bits() { DataType::Bool } else { types[*t as usize] };
                    point(&format!("p{i}"), table, *address, t)
                })
                .collect();
            let limits = PlanLimits { max_registers, max_bits: 2000, max_gap };
            let requests = plan(&points, limits);
            let mut seen = vec![0; points.len()];
            for r in &requests {
                let limit = if r.table.is_bits() { limits.max_bits } else { limits.max_registers };
                proptest::prop_assert!(r.count <= limit);
                for &i in &r.points {
                    seen[i] += 1;
                    let p = &points[i];
                    proptest::prop_assert_eq!(p.table, r.table);
                    proptest::prop_assert!(p.address >= r.start);
                    proptest::prop_assert!(p.end() <= u32::from(r.start) + u32::from(r.count));
                }
            }
            proptest::prop_assert!(seen.iter().all(|&n| n == 1));
        }
    }
}
