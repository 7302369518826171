//! The durable buffer between sources and uplinks. Owns the state directory: records are
//! appended under strictly increasing sequence numbers, read by each uplink from its own
//! cursor, and removed only once every uplink has acknowledged them (or the size bound
//! evicts them, counted). It never talks to the network and never decides what to send.
//!
//! The [`Store`] trait keeps the backend replaceable; [`SledStore`] is the one shipped.
//! Calls block on disk I/O: async code calls them through `spawn_blocking`.

pub mod codec;
mod sled_store;
pub mod writer;

pub use sled_store::SledStore;

use crate::sample::{Record, Sample};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store is full ({used} of {max} bytes) and the full policy is `block`")]
    Full { used: u64, max: u64 },
    #[error("store I/O error: {0}")]
    Io(#[from] sled::Error),
    #[error("cannot open store in {path}: {source}")]
    Open { path: String, source: sled::Error },
    #[error("the store in {path} is in use by another process (is another tidegate running?)")]
    Locked { path: String },
    #[error("unknown uplink cursor \"{0}\"")]
    UnknownCursor(String),
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

/// A point-in-time picture of the store, for logs and `buffer stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub records: u64,
    pub bytes: u64,
    pub first_seq: Option<u64>,
    pub last_seq: u64,
    pub evicted_total: u64,
    pub dead_letters: u64,
    /// Per uplink: (name, last acknowledged sequence number, records still to send).
    pub cursors: Vec<(String, u64, u64)>,
    pub corrupt_skipped: u64,
    /// Committed records found missing from the log at start-up (damage on disk).
    pub lost_on_disk: u64,
}

pub trait Store: Send + Sync + 'static {
    /// Appends samples in order, giving each the next sequence number. With `durable`,
    /// returns only after the records are flushed to disk.
    fn append(&self, samples: &[Sample], durable: bool) -> Result<Appended, StoreError>;
    /// Flushes everything appended so far to disk.
    fn flush(&self) -> Result<(), StoreError>;
    /// Records how far the store has got, outside the store itself (about once a second),
    /// so that damage to the store can be detected and counted at the next start.
    fn checkpoint(&self) -> Result<(), StoreError>;
    /// Up to `max` records after the uplink's cursor, in sequence order.
    fn read(&self, uplink: &str, max: usize) -> Result<Vec<Record>, StoreError>;
    /// The last sequence number the uplink has acknowledged.
    fn cursor(&self, uplink: &str) -> Result<u64, StoreError>;
    /// Number of records after the uplink's cursor.
    fn pending(&self, uplink: &str) -> Result<u64, StoreError>;
    /// Marks everything up to and including `through_seq` as delivered by `uplink`, and
    /// removes what every uplink has acknowledged.
    fn ack(&self, uplink: &str, through_seq: u64) -> Result<(), StoreError>;
    /// Keeps records the backend permanently refused, with the reason, then acknowledges
    /// them so the queue moves on.
    fn dead_letter(&self, uplink: &str, records: &[Record], reason: &str)
    -> Result<(), StoreError>;
    fn stats(&self) -> Result<StoreStats, StoreError>;
}
