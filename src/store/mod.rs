//! The durable buffer between sources and uplinks. Owns the state directory: records are
//! appended under strictly increasing sequence numbers, read by each uplink from its own
//! cursor, and removed only once every uplink has acknowledged them (or the size or age
//! bound drops them, counted). It never talks to the network and never decides what to
//! send.
//!
//! Layout of `<state_dir>`:
//! - `log/main/`, `log/priority/`: the two lanes, segment files of checksummed frames
//!   ([`frame`]); the priority lane (anomaly events, records a rule marks) is sent first;
//! - `state.v`, `state.0`, `state.1`: cursors, counters and the watermark ([`snapshot`]);
//! - `deadletters/`: records a backend refused for good, and requeued ones ([`dead`]);
//! - `quarantine/`: the raw bytes of damaged regions, for a person to look at;
//! - `lock`: held by the process that owns the store.
//!
//! Calls block on disk I/O: async code calls them through `spawn_blocking`.

pub mod dead;
pub mod frame;
pub mod inspect;
pub mod lane;
mod log_store;
pub mod snapshot;
pub mod writer;

use std::time::Duration;

pub use log_store::LogStore;

use crate::config::FullPolicy;
use crate::sample::{Record, RecordForm, Sample};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store is full ({used} of {max} bytes) and the full policy is `block`")]
    Full { used: u64, max: u64 },
    #[error("store I/O error on {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "the store in {path} is in use by another process{}; stop it first (systemctl stop tidegate)",
        pid.map(|p| format!(" (tidegate, pid {p})")).unwrap_or_default()
    )]
    Locked { path: String, pid: Option<u32> },
    #[error(transparent)]
    DeadLetters(#[from] dead::DeadLetterError),
    #[error("unknown uplink cursor \"{0}\"")]
    UnknownCursor(String),
    #[error("store task failed: {0}")]
    Task(String),
}

impl From<lane::LaneError> for StoreError {
    fn from(e: lane::LaneError) -> Self {
        match e {
            lane::LaneError::Io { path, source } => StoreError::Io { path, source },
        }
    }
}

/// Which queue a record waits in. Each uplink sends requeued records first, then the
/// priority lane, then the main lane; order by sequence number holds within each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Lane {
    Main = 0,
    Priority = 1,
    /// Dead letters a person sent back, for one uplink.
    Requeued = 2,
}

impl Lane {
    pub fn name(self) -> &'static str {
        match self {
            Lane::Main => "main",
            Lane::Priority => "priority",
            Lane::Requeued => "requeued",
        }
    }
}

/// Records read for one uplink from one lane.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub lane: Lane,
    /// Acknowledge through here (a position in the lane; the sequence number for
    /// requeued records). May lie past the last record, when damaged ones were skipped.
    pub through: u64,
    pub records: Vec<Record>,
}

/// What an append did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Appended {
    /// Sequence numbers given to the appended samples, `first..=last`.
    pub first_seq: u64,
    pub last_seq: u64,
    /// Oldest records removed to make room (drop_oldest policy).
    pub evicted: u64,
}

/// How far the store has committed, per lane: what wakes the uplinks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Committed {
    pub seq: u64,
    /// Last position readers can see in the main and priority lanes.
    pub positions: [u64; 2],
}

/// Per uplink, for logs and `buffer stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UplinkBacklog {
    pub name: String,
    /// Records still to send, over every lane.
    pub pending: u64,
    /// Acknowledged through these positions (main, priority).
    pub acked: [u64; 2],
}

/// A point-in-time picture of the store, for logs and `buffer stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Live records and their bytes, over both lanes.
    pub records: u64,
    pub bytes: u64,
    pub priority_records: u64,
    /// The last sequence number given out.
    pub last_seq: u64,
    pub evicted_total: u64,
    pub expired_total: u64,
    pub purged_total: u64,
    pub dead_letters: u64,
    pub requeued: u64,
    pub uplinks: Vec<UplinkBacklog>,
    /// Records found damaged or missing on disk, over the store's life.
    pub damaged_total: u64,
    /// Of those, found when this process opened the store.
    pub lost_on_disk: u64,
    /// Bytes of the segment files.
    pub disk_bytes: u64,
}

/// How the store bounds itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    pub max_bytes: u64,
    pub policy: FullPolicy,
    /// Records older than this (in time the gateway has run) are dropped, counted.
    pub max_age: Option<Duration>,
    /// Size at which a segment file is closed and a new one started. `None`: derived from
    /// `max_bytes` (a sixteenth, between 64 KiB and 16 MiB).
    pub segment_bytes: Option<u64>,
}

impl StoreOptions {
    pub fn new(max_bytes: u64, policy: FullPolicy) -> Self {
        StoreOptions {
            max_bytes,
            policy,
            max_age: None,
            segment_bytes: None,
        }
    }

    pub fn segment_target(&self) -> u64 {
        self.segment_bytes
            .unwrap_or((self.max_bytes / 16).clamp(64 << 10, 16 << 20))
    }
}

pub trait Store: Send + Sync + 'static {
    /// Appends samples in order, each to its lane, giving each the next sequence number.
    /// With `durable`, returns only after the records are flushed to disk.
    fn append(&self, entries: &[(Lane, Sample)], durable: bool) -> Result<Appended, StoreError>;
    /// Flushes everything appended so far to disk and makes it visible to readers.
    fn flush(&self) -> Result<(), StoreError>;
    /// Makes the cursors and counters durable, applies `max_age`, and deletes segment
    /// files nothing needs any more. About once a second.
    fn checkpoint(&self) -> Result<(), StoreError>;
    /// The next records the uplink should send: requeued first, then the priority lane,
    /// then the main lane. `None` when it has everything.
    fn read(&self, uplink: &str, max: usize) -> Result<Option<Batch>, StoreError> {
        self.read_as(uplink, max, RecordForm::Sample)
    }
    /// [`Store::read`], with the records decoded or kept as their stored JSON. A record
    /// that does not decode is quarantined only when read decoded: as JSON it is sent as
    /// it was written.
    fn read_as(
        &self,
        uplink: &str,
        max: usize,
        form: RecordForm,
    ) -> Result<Option<Batch>, StoreError>;
    /// Number of records the uplink has still to send.
    fn pending(&self, uplink: &str) -> Result<u64, StoreError>;
    /// Marks a lane delivered by `uplink` through `through` (a batch's `through`), and
    /// releases what every uplink has.
    fn ack(&self, uplink: &str, lane: Lane, through: u64) -> Result<(), StoreError>;
    /// Keeps the batch's records as dead letters, with the reason, then acknowledges them
    /// so the queue moves on.
    fn dead_letter(&self, uplink: &str, batch: &Batch, reason: &str) -> Result<(), StoreError>;
    fn stats(&self) -> Result<StoreStats, StoreError>;
    /// What readers can see now.
    fn committed(&self) -> Committed;
    /// A new uplink (a reload added it): it starts at the oldest record held.
    fn add_uplink(&self, uplink: &str) -> Result<(), StoreError>;
    /// An uplink is gone (a reload removed it): its cursor no longer holds records back.
    fn remove_uplink(&self, uplink: &str) -> Result<(), StoreError>;
}
