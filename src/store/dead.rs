//! Records a backend refused for good, kept for a person to look at, and the ones that
//! person sent back (`tidegate buffer requeue-dead-letters`). A small keyed set that is
//! browsed, exported and emptied selectively: sled, in `<state_dir>/deadletters`.
//!
//! - tree `dead`: key = uplink, 0x00, sequence number (big-endian); value = JSON
//!   `{"uplink", "reason", "at", "record"}`;
//! - tree `requeue`: same key; value = the record's JSON. An uplink sends its requeued
//!   records before anything else, under their original sequence numbers, so the
//!   backend's deduplication still works and other uplinks are not sent them again.

use std::path::{Path, PathBuf};

use crate::sample::{Record, now_ms};

#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("dead-letter store {path}: {source}")]
    Sled { path: String, source: sled::Error },
    #[error(
        "the dead-letter store {path} is in use by another process (is tidegate running? stop it first)"
    )]
    Locked { path: String },
    #[error("dead-letter store {path}: cannot set the damaged store aside: {source}")]
    SetAside {
        path: String,
        source: std::io::Error,
    },
}

pub struct DeadLetters {
    path: PathBuf,
    db: sled::Db,
    dead: sled::Tree,
    requeue: sled::Tree,
}

fn key(uplink: &str, seq: u64) -> Vec<u8> {
    let mut k = uplink.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn prefix(uplink: &str) -> Vec<u8> {
    let mut k = uplink.as_bytes().to_vec();
    k.push(0);
    k
}

/// How long to wait for sled's file lock: a process that just stopped can hold it briefly.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl DeadLetters {
    fn open_once(path: &Path, lock_wait: std::time::Duration) -> Result<Self, DeadLetterError> {
        let started = std::time::Instant::now();
        let db = loop {
            // A small cache: this store holds little and is rarely read.
            match sled::Config::new()
                .path(path)
                .cache_capacity(1 << 20)
                .open()
            {
                Ok(db) => break db,
                Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                    if started.elapsed() >= lock_wait {
                        return Err(DeadLetterError::Locked {
                            path: path.display().to_string(),
                        });
                    }
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(source) => {
                    return Err(DeadLetterError::Sled {
                        path: path.display().to_string(),
                        source,
                    });
                }
            }
        };
        let sled_err = |source| DeadLetterError::Sled {
            path: path.display().to_string(),
            source,
        };
        Ok(DeadLetters {
            path: path.to_path_buf(),
            dead: db.open_tree("dead").map_err(sled_err)?,
            requeue: db.open_tree("requeue").map_err(sled_err)?,
            db,
        })
    }

    /// Opens the store; one sled cannot open (it reports corruption or panics while
    /// recovering) is moved aside to `deadletters.damaged-<unix time>` with an ERROR and
    /// a new one is started: damage here must not keep the gateway from running.
    pub fn open_or_recover(state_dir: &Path) -> Result<Self, DeadLetterError> {
        Self::open_with_wait(state_dir, LOCK_WAIT)
    }

    pub fn open_with_wait(
        state_dir: &Path,
        lock_wait: std::time::Duration,
    ) -> Result<Self, DeadLetterError> {
        let path = state_dir.join("deadletters");
        let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Self::open_once(&path, lock_wait)
        }));
        let reason = match attempt {
            Ok(Ok(store)) => return Ok(store),
            Ok(Err(DeadLetterError::Sled {
                source: source @ (sled::Error::Corruption { .. } | sled::Error::ReportableBug(_)),
                ..
            })) => source.to_string(),
            Ok(Err(other)) => return Err(other),
            Err(panic) => panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic while opening".into()),
        };
        let aside = state_dir.join(format!("deadletters.damaged-{}", now_ms() / 1000));
        log::error!(
            "dead-letter store {} is damaged and cannot be opened ({reason}); moved to {} and starting an empty one",
            path.display(),
            aside.display()
        );
        std::fs::rename(&path, &aside).map_err(|source| DeadLetterError::SetAside {
            path: path.display().to_string(),
            source,
        })?;
        Self::open_once(&path, lock_wait)
    }

    fn err(&self, source: sled::Error) -> DeadLetterError {
        DeadLetterError::Sled {
            path: self.path.display().to_string(),
            source,
        }
    }

    /// Keeps refused records, flushed before it returns: the caller moves the queue on
    /// right after.
    pub fn put(
        &self,
        uplink: &str,
        records: &[Record],
        reason: &str,
    ) -> Result<(), DeadLetterError> {
        let mut batch = sled::Batch::default();
        let at = now_ms();
        for record in records {
            let value = serde_json::json!({
                "uplink": uplink, "reason": reason, "at": at, "record": record,
            });
            batch.insert(
                key(uplink, record.seq),
                serde_json::to_vec(&value).expect("JSON value serialises"),
            );
        }
        self.dead.apply_batch(batch).map_err(|e| self.err(e))?;
        self.db.flush().map_err(|e| self.err(e))?;
        Ok(())
    }

    pub fn count(&self) -> u64 {
        self.dead.len() as u64
    }

    pub fn requeued_count(&self) -> u64 {
        self.requeue.len() as u64
    }

    /// Every dead letter (of one uplink, or all), as stored.
    pub fn export(&self, uplink: Option<&str>) -> Result<Vec<serde_json::Value>, DeadLetterError> {
        let iter = match uplink {
            Some(u) => self.dead.scan_prefix(prefix(u)),
            None => self.dead.iter(),
        };
        let mut out = Vec::new();
        for item in iter {
            let (_, v) = item.map_err(|e| self.err(e))?;
            if let Ok(value) = serde_json::from_slice(&v) {
                out.push(value);
            }
        }
        Ok(out)
    }

    /// Moves dead letters back for their uplink to send again. Returns how many.
    pub fn requeue(&self, uplink: Option<&str>) -> Result<u64, DeadLetterError> {
        let mut moved = 0;
        for value in self.export(uplink)? {
            let (Some(name), Some(record)) = (value["uplink"].as_str(), value.get("record")) else {
                continue;
            };
            let Ok(record) = serde_json::from_value::<Record>(record.clone()) else {
                continue;
            };
            let k = key(name, record.seq);
            self.requeue
                .insert(&k, serde_json::to_vec(&record).expect("record serialises"))
                .map_err(|e| self.err(e))?;
            self.dead.remove(&k).map_err(|e| self.err(e))?;
            moved += 1;
        }
        self.db.flush().map_err(|e| self.err(e))?;
        Ok(moved)
    }

    /// Up to `max` requeued records of an uplink, in sequence order.
    pub fn requeued(&self, uplink: &str, max: usize) -> Result<Vec<Record>, DeadLetterError> {
        let mut out = Vec::new();
        for item in self.requeue.scan_prefix(prefix(uplink)) {
            if out.len() >= max {
                break;
            }
            let (_, v) = item.map_err(|e| self.err(e))?;
            if let Ok(record) = serde_json::from_slice(&v) {
                out.push(record);
            }
        }
        Ok(out)
    }

    /// Requeued records of an uplink up to `through_seq` were delivered (or set aside).
    pub fn ack_requeued(&self, uplink: &str, through_seq: u64) -> Result<(), DeadLetterError> {
        let mut batch = sled::Batch::default();
        for item in self
            .requeue
            .range(prefix(uplink)..=key(uplink, through_seq))
        {
            let (k, _) = item.map_err(|e| self.err(e))?;
            batch.remove(k);
        }
        self.requeue.apply_batch(batch).map_err(|e| self.err(e))?;
        self.db.flush().map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Drops every dead letter (and every requeued record). Returns how many.
    pub fn purge(&self) -> Result<u64, DeadLetterError> {
        let n = self.count() + self.requeued_count();
        self.dead.clear().map_err(|e| self.err(e))?;
        self.requeue.clear().map_err(|e| self.err(e))?;
        self.db.flush().map_err(|e| self.err(e))?;
        Ok(n)
    }

    pub fn flush(&self) -> Result<(), DeadLetterError> {
        self.db.flush().map_err(|e| self.err(e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::Sample;

    fn record(seq: u64) -> Record {
        Record::new(seq, Sample::new("s", "d", seq as i64))
    }

    #[test]
    fn requeued_records_go_back_to_their_own_uplink_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = DeadLetters::open_or_recover(dir.path()).unwrap();
        store.put("a", &[record(3), record(4)], "HTTP 400").unwrap();
        store.put("b", &[record(9)], "HTTP 422").unwrap();
        assert_eq!(store.count(), 3);
        assert_eq!(store.requeue(Some("a")).unwrap(), 2);
        assert_eq!(store.count(), 1);
        assert_eq!(
            store
                .requeued("a", 10)
                .unwrap()
                .iter()
                .map(|r| r.seq)
                .collect::<Vec<_>>(),
            vec![3, 4]
        );
        assert!(store.requeued("b", 10).unwrap().is_empty());
        store.ack_requeued("a", 3).unwrap();
        assert_eq!(store.requeued("a", 10).unwrap()[0].seq, 4);
        assert_eq!(store.purge().unwrap(), 2);
    }
}
