//! Running as a service: logging (journald or stderr), the counters every stage updates,
//! the periodic summary line, systemd notification, the operator's `buffer` commands, and
//! giving back start-up code pages. Owns no data path: a failure here never stops samples
//! from flowing.

pub mod buffer;
pub mod health;
pub mod logging;
// The one `unsafe` of the library: handing pages of the binary back to the kernel.
#[allow(unsafe_code)]
pub mod memory;
pub mod stats;
pub mod summary;

pub use stats::Stats;
