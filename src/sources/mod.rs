//! Sources: where samples come from. Each source turns field traffic into [`Sample`]s and
//! hands them to the store writer with a commit callback; it never buffers beyond its
//! bounded channel, never waits on an uplink, and stops when shutdown is signalled.
//!
//! - `mqtt`: subscribes to a local broker, QoS 1 with manual acknowledgement after commit;
//! - `sim`: a simulated plant for `tidegate demo`.
//!
//! [`Sample`]: crate::sample::Sample

pub mod modbus;
pub mod mqtt;
pub mod sim;
