//! Validation of the Modbus sources: addresses and their notation, data types, the read
//! plan each device gets, serial settings. Pure, like the rest of `validate`.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use super::files::{join_index, join_key};
use super::raw::*;
use super::validate::Checker;
use super::{ModbusDeviceConfig, ModbusLink, ModbusSourceConfig};
use crate::sources::modbus::decode::{DataType, Decoding};
use crate::sources::modbus::plan::{self, PlanLimits, Point, Table};

/// Splits the conventional notation: `"40001"` → (holding, 0); `"400001"` → (holding, 0).
pub fn parse_notation(text: &str) -> Result<(Table, u16), String> {
    let digits = text.trim();
    if !(digits.len() == 5 || digits.len() == 6) || !digits.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "\"{text}\" is not a register notation: use 5 or 6 digits such as \"40001\", or a 0-based integer with `table`"
        ));
    }
    let table = match &digits[..1] {
        "0" => Table::Coil,
        "1" => Table::DiscreteInput,
        "3" => Table::InputRegister,
        "4" => Table::HoldingRegister,
        other => {
            return Err(format!(
                "\"{text}\": a notation starts with 0, 1, 3 or 4, not {other}"
            ));
        }
    };
    let number: u32 = digits[1..].parse().expect("all digits");
    if number == 0 || number > 65_536 {
        return Err(format!(
            "\"{text}\": the register number must be 1 to 65536 (1-based)"
        ));
    }
    Ok((table, (number - 1) as u16))
}

/// An address as the `probe` command takes it: a notation such as "40001", or a 0-based
/// number with a table name.
pub fn parse_address(address: &str, table: Option<&str>) -> Result<(Table, u16), String> {
    let named = match table {
        None => None,
        Some("holding") => Some(Table::HoldingRegister),
        Some("input") => Some(Table::InputRegister),
        Some("coil") => Some(Table::Coil),
        Some("discrete") => Some(Table::DiscreteInput),
        Some(other) => {
            return Err(format!(
                "table is holding, input, coil or discrete, not \"{other}\""
            ));
        }
    };
    if address.len() >= 5 && named.is_none() {
        return parse_notation(address);
    }
    let number: u16 = address.parse().map_err(|_| {
        format!("\"{address}\" is neither a 0-based address nor a notation such as 40001")
    })?;
    Ok((named.unwrap_or(Table::HoldingRegister), number))
}

fn table_of(raw: RawTable) -> Table {
    match raw {
        RawTable::Holding => Table::HoldingRegister,
        RawTable::Input => Table::InputRegister,
        RawTable::Coil => Table::Coil,
        RawTable::Discrete => Table::DiscreteInput,
    }
}

fn point(
    c: &mut Checker<'_>,
    path: &str,
    raw: &RawPoint,
    device_order: crate::sources::modbus::decode::ByteOrder,
) -> Option<Point> {
    let mut ok = true;
    let (table, address) = match &raw.address {
        RawAddress::Notation(text) => match parse_notation(text) {
            Ok((table, address)) => {
                if let Some(given) = raw.table
                    && table_of(given) != table
                {
                    c.error(
                        &join_key(path, "table"),
                        format!(
                            "\"{text}\" is an address of the {table} table, but `table` says {}",
                            table_of(given)
                        ),
                    );
                    ok = false;
                }
                (table, address)
            }
            Err(e) => {
                c.error(&join_key(path, "address"), e);
                return None;
            }
        },
        RawAddress::ZeroBased(n) => {
            let Some(table) = raw.table else {
                c.error(
                    &join_key(path, "table"),
                    "a 0-based address needs `table` (holding, input, coil or discrete)",
                );
                return None;
            };
            match u16::try_from(*n) {
                Ok(address) => (table_of(table), address),
                Err(_) => {
                    c.error(
                        &join_key(path, "address"),
                        format!("{n} is out of range: must be 0 to 65535"),
                    );
                    return None;
                }
            }
        }
    };
    let data_type = raw.data_type.unwrap_or(if table.is_bits() {
        DataType::Bool
    } else {
        DataType::U16
    });
    if table.is_bits() && data_type != DataType::Bool {
        c.error(
            &join_key(path, "type"),
            format!("a {table} holds one bit: its type is bool"),
        );
        ok = false;
    }
    if let Some(bit) = raw.bit {
        if table.is_bits() || data_type != DataType::Bool {
            c.error(
                &join_key(path, "bit"),
                "`bit` selects a bit of a register for a bool point",
            );
            ok = false;
        } else if bit > 15 {
            c.error(
                &join_key(path, "bit"),
                format!("{bit} is out of range: a register has bits 0 to 15"),
            );
            ok = false;
        }
    }
    let string_len = match (data_type, raw.length) {
        (DataType::String, Some(len)) if (1..=125).contains(&len) => len,
        (DataType::String, Some(len)) => {
            c.error(
                &join_key(path, "length"),
                format!("{len} is out of range: 1 to 125 registers"),
            );
            return None;
        }
        (DataType::String, None) => {
            c.error(
                path,
                "a string point needs `length` (registers, 2 characters each)",
            );
            return None;
        }
        (_, Some(_)) => {
            c.error(
                &join_key(path, "length"),
                "`length` applies to string points only",
            );
            ok = false;
            0
        }
        (_, None) => 0,
    };
    let scaled = raw.scale != 1.0 || raw.offset != 0.0;
    if !raw.scale.is_finite() || raw.scale == 0.0 {
        c.error(
            &join_key(path, "scale"),
            "must be a finite, non-zero number",
        );
        ok = false;
    }
    if !raw.offset.is_finite() {
        c.error(&join_key(path, "offset"), "must be a finite number");
        ok = false;
    }
    if scaled && matches!(data_type, DataType::Bool | DataType::String) {
        c.error(
            path,
            format!("scale and offset do not apply to {data_type:?} points"),
        );
        ok = false;
    }
    let point = Point {
        name: raw.name.as_str().into(),
        table,
        address,
        decoding: Decoding {
            data_type,
            order: raw.byte_order.unwrap_or(device_order),
            bit: raw.bit,
            scale: raw.scale,
            offset: raw.offset,
        },
        string_len,
        unit: raw.unit.clone(),
    };
    if point.end() > 65_536 {
        c.error(
            &join_key(path, "address"),
            "the value runs past address 65535",
        );
        ok = false;
    }
    ok.then_some(point)
}

fn device(
    c: &mut Checker<'_>,
    path: &str,
    raw: &RawModbusDevice,
    serial: bool,
    profiles: &BTreeMap<String, (String, RawProfile)>,
    device_names: &mut HashSet<String>,
) -> Option<ModbusDeviceConfig> {
    c.name(&join_key(path, "name"), &raw.name, device_names);
    if serial && !(1..=247).contains(&raw.unit) {
        c.error(
            &join_key(path, "unit"),
            format!("{} is out of range: 1 to 247 on a serial line", raw.unit),
        );
    }
    c.range_duration(
        &join_key(path, "poll_interval"),
        raw.poll_interval.0,
        Duration::from_millis(10),
        Duration::from_secs(3600),
    );
    c.range_duration(
        &join_key(path, "timeout"),
        raw.timeout.0,
        Duration::from_millis(10),
        Duration::from_secs(60),
    );
    c.range_usize(&join_key(path, "retries"), usize::from(raw.retries), 0, 5);
    c.range_usize(
        &join_key(path, "max_registers_per_read"),
        usize::from(raw.max_registers_per_read),
        1,
        125,
    );
    c.range_usize(
        &join_key(path, "max_bits_per_read"),
        usize::from(raw.max_bits_per_read),
        1,
        2000,
    );
    let limits = PlanLimits {
        max_registers: raw.max_registers_per_read.clamp(1, 125),
        max_bits: raw.max_bits_per_read.clamp(1, 2000),
        max_gap: raw.max_gap,
    };

    let errors_before = c.error_count();
    let mut points = Vec::new();
    let mut names = HashSet::new();
    let mut add = |c: &mut Checker<'_>, point_path: String, raw_point: &RawPoint| {
        if !names.insert(raw_point.name.clone()) {
            c.error(
                &join_key(&point_path, "name"),
                format!("point \"{}\" appears twice in this device", raw_point.name),
            );
            return;
        }
        if let Some(p) = point(c, &point_path, raw_point, raw.byte_order) {
            let limit = if p.table.is_bits() {
                limits.max_bits
            } else {
                limits.max_registers
            };
            if p.width() > limit {
                c.error(
                    &point_path,
                    format!(
                        "the point takes {} registers, more than one read of device \"{}\" allows ({limit})",
                        p.width(),
                        raw.name
                    ),
                );
                return;
            }
            points.push(p);
        }
    };
    if let Some(profile_name) = &raw.profile {
        match profiles.get(profile_name) {
            Some((profile_path, profile)) => {
                for (i, raw_point) in profile.points.iter().enumerate() {
                    add(
                        c,
                        join_index(&join_key(profile_path, "points"), i),
                        raw_point,
                    );
                }
            }
            None => c.error(
                &join_key(path, "profile"),
                format!("no profile \"{profile_name}\": define it as [profiles.{profile_name}]"),
            ),
        }
    }
    for (i, raw_point) in raw.points.iter().enumerate() {
        add(c, join_index(&join_key(path, "points"), i), raw_point);
    }
    if points.is_empty() {
        // When its points were all wrong, those errors already say what to fix.
        if c.error_count() == errors_before {
            c.error(
                path,
                "the device has no points: add `points` or a `profile`",
            );
        }
        return None;
    }
    let requests = plan::plan(&points, limits);
    Some(ModbusDeviceConfig {
        name: raw.name.clone(),
        unit: raw.unit,
        poll_interval: raw.poll_interval.0,
        timeout: raw.timeout.0,
        retries: raw.retries,
        points: points.into(),
        requests: requests.into(),
    })
}

/// Validates `[[sources.modbus_tcp]]`, `[[sources.modbus_rtu]]` and `[profiles]`.
pub fn sources(
    c: &mut Checker<'_>,
    source_names: &mut HashSet<String>,
    device_names: &mut HashSet<String>,
) -> Vec<ModbusSourceConfig> {
    let mut out = unshared_sources(c, source_names, device_names);
    share_point_tables(&mut out);
    out
}

/// Devices with equal point tables (a profile, usually) end up holding one copy.
fn share_point_tables(sources: &mut [ModbusSourceConfig]) {
    type Tables = (Arc<[Point]>, Arc<[plan::ReadRequest]>);
    let mut distinct: Vec<Tables> = Vec::new();
    for device in sources.iter_mut().flat_map(|s| s.devices.iter_mut()) {
        match distinct
            .iter()
            .find(|(points, requests)| *points == device.points && *requests == device.requests)
        {
            Some((points, requests)) => {
                device.points = points.clone();
                device.requests = requests.clone();
            }
            None => distinct.push((device.points.clone(), device.requests.clone())),
        }
    }
}

fn unshared_sources(
    c: &mut Checker<'_>,
    source_names: &mut HashSet<String>,
    device_names: &mut HashSet<String>,
) -> Vec<ModbusSourceConfig> {
    let doc_table = c.doc().merged.clone();
    let mut profiles: BTreeMap<String, (String, RawProfile)> = BTreeMap::new();
    if let Some(value) = doc_table.get("profiles") {
        match value.as_table() {
            Some(table) => {
                for (name, item) in table {
                    let path = join_key("profiles", name);
                    if let Some(profile) = c.section::<RawProfile>(item, &path) {
                        profiles.insert(name.clone(), (path, profile));
                    }
                }
            }
            None => c.error("profiles", "expected a table of [profiles.<name>]"),
        }
    }
    let mut out = Vec::new();
    let Some(sources) = doc_table.get("sources") else {
        return out;
    };
    if let Some(list) = sources.get("modbus_tcp") {
        for (path, item) in c.array_items(list, "sources.modbus_tcp") {
            let Some(raw) = c.section::<RawModbusTcp>(item, &path) else {
                continue;
            };
            c.name(&join_key(&path, "name"), &raw.name, source_names);
            if raw.host.trim().is_empty() {
                c.error(&join_key(&path, "host"), "must not be empty");
            }
            if raw.port == 0 {
                c.error(&join_key(&path, "port"), "0 is not a usable port");
            }
            c.range_duration(
                &join_key(&path, "connect_timeout"),
                raw.connect_timeout.0,
                Duration::from_millis(10),
                Duration::from_secs(60),
            );
            let devices = devices(c, &path, &raw.devices, false, &profiles, device_names);
            out.push(ModbusSourceConfig {
                name: raw.name,
                link: ModbusLink::Tcp {
                    host: raw.host,
                    port: raw.port,
                    connect_timeout: raw.connect_timeout.0,
                },
                devices,
            });
        }
    }
    if let Some(list) = sources.get("modbus_rtu") {
        for (path, item) in c.array_items(list, "sources.modbus_rtu") {
            let Some(raw) = c.section::<RawModbusRtu>(item, &path) else {
                continue;
            };
            c.name(&join_key(&path, "name"), &raw.name, source_names);
            if !(50..=4_000_000).contains(&raw.baud) {
                c.error(
                    &join_key(&path, "baud"),
                    format!("{} is out of range: 50 to 4000000", raw.baud),
                );
            }
            if !matches!(raw.data_bits, 7 | 8) {
                c.error(
                    &join_key(&path, "data_bits"),
                    format!("{}: use 7 or 8", raw.data_bits),
                );
            }
            if !matches!(raw.stop_bits, 1 | 2) {
                c.error(
                    &join_key(&path, "stop_bits"),
                    format!("{}: use 1 or 2", raw.stop_bits),
                );
            }
            let inter_request_delay = match raw.inter_request_delay {
                Some(d) => {
                    c.range_duration(
                        &join_key(&path, "inter_request_delay"),
                        d.0,
                        Duration::ZERO,
                        Duration::from_secs(1),
                    );
                    d.0
                }
                None => silent_interval(raw.baud.max(50), raw.data_bits, raw.parity, raw.stop_bits),
            };
            let device_path = raw.device.clone();
            if device_path.as_os_str().is_empty() {
                c.error(
                    &join_key(&path, "device"),
                    "must name a serial device such as /dev/ttyUSB0",
                );
            }
            let devices = devices(c, &path, &raw.devices, true, &profiles, device_names);
            let mut units = HashSet::new();
            for (i, d) in devices.iter().enumerate() {
                if !units.insert(d.unit) {
                    c.error(
                        &join_key(&join_index(&join_key(&path, "devices"), i), "unit"),
                        format!("unit {} is used twice on this line", d.unit),
                    );
                }
            }
            out.push(ModbusSourceConfig {
                name: raw.name,
                link: ModbusLink::Rtu {
                    device: device_path,
                    baud: raw.baud,
                    parity: raw.parity,
                    data_bits: raw.data_bits,
                    stop_bits: raw.stop_bits,
                    inter_request_delay,
                },
                devices,
            });
        }
    }
    out
}

fn devices(
    c: &mut Checker<'_>,
    path: &str,
    raw: &[RawModbusDevice],
    serial: bool,
    profiles: &BTreeMap<String, (String, RawProfile)>,
    device_names: &mut HashSet<String>,
) -> Vec<ModbusDeviceConfig> {
    if raw.is_empty() {
        c.error(&join_key(path, "devices"), "at least one device is needed");
    }
    raw.iter()
        .enumerate()
        .filter_map(|(i, d)| {
            let device_path = join_index(&join_key(path, "devices"), i);
            device(c, &device_path, d, serial, profiles, device_names)
        })
        .collect()
}

/// The standard's silent interval between frames: 3.5 character times, or a fixed 1.75 ms
/// above 19200 baud.
pub fn silent_interval(baud: u32, data_bits: u8, parity: Parity, stop_bits: u8) -> Duration {
    if baud > 19_200 {
        return Duration::from_micros(1750);
    }
    let bits_per_char =
        1 + u32::from(data_bits) + u32::from(parity != Parity::None) + u32::from(stop_bits);
    Duration::from_secs_f64(3.5 * f64::from(bits_per_char) / f64::from(baud))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notation_maps_to_table_and_zero_based_address() {
        assert_eq!(
            parse_notation("40001").unwrap(),
            (Table::HoldingRegister, 0)
        );
        assert_eq!(parse_notation("30010").unwrap(), (Table::InputRegister, 9));
        assert_eq!(parse_notation("10001").unwrap(), (Table::DiscreteInput, 0));
        assert_eq!(parse_notation("00005").unwrap(), (Table::Coil, 4));
        assert_eq!(
            parse_notation("465536").unwrap(),
            (Table::HoldingRegister, 65535)
        );
        assert!(parse_notation("40000").is_err());
        assert!(parse_notation("50001").is_err());
        assert!(parse_notation("4001").is_err());
    }

    #[test]
    fn devices_of_one_profile_share_one_point_table() {
        let text = r#"
[gateway]
id = "gw"
state_dir = "/tmp/tidegate-test-unused"
[profiles.meter]
points = [{ name = "v", address = "40001" }, { name = "f", address = "40010", type = "f32" }]
[[sources.modbus_tcp]]
name = "a"
host = "127.0.0.1"
[[sources.modbus_tcp.devices]]
name = "m1"
profile = "meter"
[[sources.modbus_tcp]]
name = "b"
host = "127.0.0.1"
[[sources.modbus_tcp.devices]]
name = "m2"
profile = "meter"
[[sources.modbus_tcp.devices]]
name = "other"
unit = 2
points = [{ name = "v", address = "40002" }]
[[uplinks.stdout]]
name = "out"
"#;
        let config = crate::config::from_str("t.toml", text, &crate::config::SystemEnvironment)
            .unwrap_or_else(|e| panic!("{e}"));
        let devices: Vec<&ModbusDeviceConfig> = config
            .modbus_sources
            .iter()
            .flat_map(|s| s.devices.iter())
            .collect();
        assert_eq!(devices.len(), 3);
        assert!(Arc::ptr_eq(&devices[0].points, &devices[1].points));
        assert!(Arc::ptr_eq(&devices[0].requests, &devices[1].requests));
        assert!(!Arc::ptr_eq(&devices[0].points, &devices[2].points));
        assert_eq!(&*devices[2].points[0].name, "v");
        assert_eq!(devices[2].points[0].address, 1);
    }

    #[test]
    fn silent_interval_follows_the_standard() {
        let at_9600 = silent_interval(9600, 8, Parity::Even, 1);
        assert!((at_9600.as_secs_f64() - 3.5 * 11.0 / 9600.0).abs() < 1e-9);
        assert_eq!(
            silent_interval(115_200, 8, Parity::None, 1),
            Duration::from_micros(1750)
        );
    }
}
