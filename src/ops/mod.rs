//! Running as a service: logging (journald or stderr), the counters every stage updates,
//! the periodic summary line, systemd notification, and the operator's `buffer`
//! commands. Owns no data path: a failure here never stops samples from flowing.

pub mod buffer;
pub mod health;
pub mod logging;
pub mod stats;
pub mod summary;

pub use stats::Stats;
