//! The Modbus master: TCP endpoints and RS-485 serial lines (RTU), polled on fixed-rate
//! schedules with per-request deadlines. Read-only by construction: only function codes
//! 01–04 are ever sent (the client is used through tokio-modbus's `Reader` alone).
//!
//! - `decode`: registers → typed values (byte and word order, scale, strings). Pure.
//! - `plan`: a device's points → the fewest read requests. Pure.
//! - `schedule`: drift-free fixed-rate slots, phase-spread, overruns skipped. Pure.
//! - `breaker`: per-device circuit breaker so a dead unit cannot stall its bus. Pure.
//! - `bus`: the async loop of one TCP endpoint or serial line.
//! - `probe`: commissioning reads and bus scans for `tidegate probe modbus`.
//! - `sim`: the simulated plant `tidegate demo` polls, a Modbus TCP server on loopback.

pub mod breaker;
pub(crate) mod bus;
pub mod decode;
pub mod plan;
pub mod probe;

pub mod schedule;

pub mod sim;

pub use bus::run;
