//! # tidegate
//!
//! An edge gateway daemon: it takes telemetry from field devices, keeps it in a durable
//! store while the way out is closed, and forwards it in batches when the way opens.
//!
//! ```text
//!  sources ──► pipeline ──► store writer ──► segment log ──► uplinks
//!  modbus,       windows,     group commit      two lanes,      http, influxdb,
//!  mqtt, sim     ONNX score                     cursors         mqtt, file, stdout
//!      ◄──── PUBACK after commit ───┘
//! ```
//!
//! ## Layout
//!
//! - [`config`]: TOML files → validated [`config::Config`], every error with file, line
//!   and key path. Never starts anything.
//! - [`sample`]: the types every stage shares: `Sample`, `Value`, `Quality`, `Record`.
//! - [`sources`]: field traffic → samples (Modbus TCP/RTU master, MQTT subscriber,
//!   simulated plant).
//! - [`pipeline`]: per-device windows and local ONNX inference (tract) that enrich each
//!   sample with its anomaly score; replay of recorded data through the same code.
//! - [`store`]: the durable queue: a log of checksummed frames in segment files (main
//!   and priority lanes), per-uplink cursors, acknowledgement, eviction, `max_age`,
//!   dead letters (sled), recovery that costs only what was damaged; and the writer task
//!   that group-commits.
//! - [`uplink`]: batches from the store to a destination (HTTPS, InfluxDB, a cloud MQTT
//!   broker, NDJSON file, stdout), with retry, back-off and dead-lettering.
//! - [`ops`]: logging, counters, the periodic summary, the `buffer` commands.
//! - [`app`]: wires it together and runs the ordered shutdown; [`cli`]: the commands.
//!
//! ## Delivery contract
//!
//! A sample is *accepted* when a source produces it, *committed* when the store holds it
//! (flushed to disk before the source is acknowledged, in `fsync` mode), and *delivered*
//! when an uplink's destination confirms it (HTTP 2xx). Every committed record is
//! delivered at least once, in sequence order per uplink and lane, unless evicted by the
//! `drop_oldest` policy, older than `max_age`, damaged on disk (each counted) or rejected
//! for good by the backend (kept as a dead letter, counted). MQTT messages are
//! acknowledged to the broker only after commit.

// One module may use `unsafe`, and says why: `ops::memory` (one `madvise` call).
#![deny(unsafe_code)]

pub mod app;
pub mod cli;
pub mod config;
pub mod ops;
pub mod pipeline;
pub mod sample;
pub mod sources;
pub mod store;
pub mod tls;
pub mod uplink;
