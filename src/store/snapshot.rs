//! The store's small state beside its log: each uplink's cursor per lane, how far each
//! lane has been dropped (evicted, expired, purged), the next sequence number, the store
//! clock, known damage and lifetime counters.
//!
//! It lives in three slot files, each `len u32 | CRC32 u32 | JSON`, and the newest valid
//! one wins at open:
//! - `state.v` is rewritten at every acknowledgement without fsync: it survives a
//!   crash of the process (the page cache is the kernel's), so a SIGKILL costs no
//!   duplicates beyond the batch in flight;
//! - `state.0` / `state.1` are written in turn at each checkpoint (about once a second)
//!   and fsynced, so a power cut falls back to at most a second-old cursor: duplicates,
//!   never a loss. One of them is always intact, even if power fails mid-write.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaneState {
    /// Highest position committed (the watermark: what the log should still hold).
    pub last_pos: u64,
    /// Positions up to here are gone on purpose (evicted, expired or purged).
    pub dropped_through: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub evicted: u64,
    pub expired: u64,
    pub purged: u64,
    /// Records found damaged or missing on disk (quarantined or counted lost).
    pub damaged: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub generation: u64,
    pub next_seq: u64,
    /// The store clock (milliseconds of running time) when written.
    pub clock_ms: u64,
    /// Main lane, priority lane.
    pub lanes: [LaneState; 2],
    /// Per uplink: acknowledged through this position, per lane.
    pub uplinks: BTreeMap<String, [u64; 2]>,
    /// Position ranges already reported lost (lane, first, last), so a restart does not
    /// report them again.
    #[serde(default)]
    pub known_gaps: Vec<(u8, u64, u64)>,
    #[serde(default)]
    pub totals: Totals,
    /// Dead letters held, as last counted (for `buffer stats` while the daemon runs).
    #[serde(default)]
    pub dead_letters: u64,
}

const SLOTS: [&str; 3] = ["state.v", "state.0", "state.1"];

pub struct SnapshotFiles {
    dir: PathBuf,
    volatile: File,
}

fn encode(snapshot: &Snapshot) -> Vec<u8> {
    let json = serde_json::to_vec(snapshot).expect("snapshot serialises");
    let mut out = Vec::with_capacity(json.len() + 8);
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    out.extend_from_slice(&crc32fast::hash(&json).to_be_bytes());
    out.extend_from_slice(&json);
    out
}

fn decode(bytes: &[u8]) -> Option<Snapshot> {
    if bytes.len() < 8 {
        return None;
    }
    let len = u32::from_be_bytes(bytes[..4].try_into().ok()?) as usize;
    let crc = u32::from_be_bytes(bytes[4..8].try_into().ok()?);
    let json = bytes.get(8..8 + len)?;
    if crc32fast::hash(json) != crc {
        return None;
    }
    serde_json::from_slice(json).ok()
}

/// The newest intact snapshot in `dir`, if any (read-only).
pub fn read_newest(dir: &Path) -> Option<Snapshot> {
    SLOTS
        .iter()
        .filter_map(|name| std::fs::read(dir.join(name)).ok())
        .filter_map(|bytes| decode(&bytes))
        .max_by_key(|s| s.generation)
}

fn write_slot(file: &File, bytes: &[u8]) -> io::Result<()> {
    file.write_all_at(bytes, 0)?;
    file.set_len(bytes.len() as u64)
}

impl SnapshotFiles {
    pub fn open(dir: &Path) -> io::Result<(Self, Option<Snapshot>)> {
        let newest = read_newest(dir);
        let volatile = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(SLOTS[0]))?;
        Ok((
            SnapshotFiles {
                dir: dir.to_path_buf(),
                volatile,
            },
            newest,
        ))
    }

    /// After an acknowledgement: cheap, survives a process crash.
    pub fn write_volatile(&self, snapshot: &Snapshot) -> io::Result<()> {
        write_slot(&self.volatile, &encode(snapshot))
    }

    /// At a checkpoint: survives a power cut once this returns.
    pub fn write_durable(&self, snapshot: &Snapshot) -> io::Result<()> {
        let name = SLOTS[1 + (snapshot.generation % 2) as usize];
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(self.dir.join(name))?;
        write_slot(&file, &encode(snapshot))?;
        file.sync_data()?;
        // The volatile slot must not hold an older generation that could win over this
        // one after a crash: it is rewritten with the same state.
        write_slot(&self.volatile, &encode(snapshot))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_intact_slot_wins() {
        let dir = tempfile::tempdir().unwrap();
        let (files, none) = SnapshotFiles::open(dir.path()).unwrap();
        assert!(none.is_none());
        let mut s = Snapshot {
            next_seq: 10,
            ..Snapshot::default()
        };
        for generation in 1..=4 {
            s.generation = generation;
            s.next_seq = 10 + generation;
            files.write_durable(&s).unwrap();
        }
        s.generation = 5;
        s.next_seq = 99;
        files.write_volatile(&s).unwrap();
        assert_eq!(read_newest(dir.path()).unwrap().next_seq, 99);
        // A torn volatile slot: the newest durable one is used.
        std::fs::write(dir.path().join("state.v"), b"\x00\x00\x00\x10garbage").unwrap();
        assert_eq!(read_newest(dir.path()).unwrap().generation, 4);
        // One durable slot damaged too: the other durable one.
        let mut bytes = std::fs::read(dir.path().join("state.0")).unwrap();
        let last = bytes.len() - 2;
        bytes[last] ^= 1;
        std::fs::write(dir.path().join("state.0"), bytes).unwrap();
        assert_eq!(read_newest(dir.path()).unwrap().generation, 3);
    }
}
