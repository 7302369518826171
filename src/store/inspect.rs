//! A read-only view of a state directory, for `tidegate buffer stats | peek | export`.
//! It changes nothing on disk and takes no lock, so it is safe while the daemon runs:
//! the log is append-only and every frame is checksummed, so a frame being written at
//! that instant is simply not shown.

use std::path::{Path, PathBuf};

use super::dead::DeadLetters;
use super::frame;
use super::lane::{LaneLog, LanePosition, NeedsRescan};
use super::log_store::{LANES, heads, stats_of};
use super::snapshot::{self, Snapshot};
use super::{Lane, StoreError, StoreOptions, StoreStats};
use crate::sample::Record;

pub struct Inspection {
    pub state_dir: PathBuf,
    lanes: [LaneLog; 2],
    pub snapshot: Snapshot,
    /// The pid of the tidegate that owns the store, when one is running.
    pub running: Option<u32>,
    /// Open only when no daemon holds it.
    dead: Option<DeadLetters>,
}

/// Is a process holding the store's lock? Returns its pid (0 if it wrote none).
pub fn lock_holder(state_dir: &Path) -> Option<u32> {
    use std::io::Read;
    let mut file = std::fs::File::open(state_dir.join("lock")).ok()?;
    match file.try_lock_shared() {
        Ok(()) => {
            let _ = file.unlock();
            None
        }
        Err(_) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            Some(text.trim().parse().unwrap_or(0))
        }
    }
}

impl Inspection {
    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        if !state_dir.join("log").exists() && !state_dir.join("state.0").exists() {
            return Err(StoreError::Io {
                path: state_dir.display().to_string(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no tidegate store here (is state_dir right?)",
                ),
            });
        }
        let running = lock_holder(state_dir);
        let snapshot = snapshot::read_newest(state_dir).unwrap_or_default();
        let heads = heads(&snapshot);
        let quarantine = state_dir.join("quarantine");
        let target =
            StoreOptions::new(1 << 30, crate::config::FullPolicy::DropOldest).segment_target();
        let open = |l: usize| -> Result<LaneLog, StoreError> {
            let (id, name) = LANES[l];
            let (lane, _) = LaneLog::open(
                id,
                name,
                &state_dir.join("log").join(name),
                &quarantine,
                LanePosition {
                    head: heads[l],
                    watermark: 0,
                },
                target,
                true,
            )?;
            Ok(lane)
        };
        let lanes = [open(0)?, open(1)?];
        let dead = if running.is_none() {
            DeadLetters::open_with_wait(state_dir, std::time::Duration::from_millis(200)).ok()
        } else {
            None
        };
        Ok(Inspection {
            state_dir: state_dir.to_path_buf(),
            lanes,
            snapshot,
            running,
            dead,
        })
    }

    pub fn stats(&self) -> StoreStats {
        let (dead, requeued) = match &self.dead {
            Some(d) => (d.count(), d.requeued_count()),
            None => (self.snapshot.dead_letters, 0),
        };
        stats_of(&self.lanes, &self.snapshot, dead, requeued, 0)
    }

    pub fn dead_letters(&self) -> Option<&DeadLetters> {
        self.dead.as_ref()
    }

    /// Calls `f` for every record an uplink has still to send (every live record when
    /// `uplink` is `None`), priority lane first, up to `limit`. Returns how many.
    pub fn each_pending(
        &mut self,
        uplink: Option<&str>,
        limit: usize,
        mut f: impl FnMut(Lane, &Record),
    ) -> Result<usize, StoreError> {
        let cursor = match uplink {
            Some(name) => *self
                .snapshot
                .uplinks
                .get(name)
                .ok_or_else(|| StoreError::UnknownCursor(name.to_string()))?,
            None => [0, 0],
        };
        let mut shown = 0;
        for (l, lane) in [(1usize, Lane::Priority), (0, Lane::Main)] {
            let mut from = cursor[l].max(self.lanes[l].head) + 1;
            while shown < limit {
                let raw = loop {
                    match self.lanes[l].read(from, (limit - shown).min(1000)) {
                        Ok(raw) => break raw,
                        Err(NeedsRescan(first)) => {
                            self.lanes[l]
                                .rescan(first)
                                .map_err(|source| StoreError::Io {
                                    path: self.state_dir.display().to_string(),
                                    source,
                                })?;
                        }
                    }
                };
                let Some(last) = raw.last() else { break };
                from = last.meta.pos + 1;
                for r in raw {
                    if let Ok(sample) = frame::decode_body(&r.body) {
                        f(lane, &Record::new(r.meta.seq, sample));
                        shown += 1;
                    }
                }
            }
        }
        Ok(shown)
    }
}
