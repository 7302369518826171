//! The sled implementation of [`Store`].
//!
//! Layout, all in one sled database under `<state_dir>/store`:
//! - tree `records`: key = sequence number as big-endian u64 (so byte order is sequence
//!   order), value = [`codec`] encoding of the sample;
//! - tree `meta`: `next_seq` (never reused, even after the store empties) and
//!   `cursor/<uplink>` = last acknowledged sequence number of each uplink;
//! - tree `dead_letter`: key = uplink name, 0x00, sequence number; value = JSON with the
//!   reason and the record, for records a backend refused for good;
//! - tree `quarantine`: raw bytes of records that failed their checksum, under their key.
//!
//! Records are only ever removed from the head (acknowledged by every uplink, or evicted
//! as the oldest when full), so the live records are one contiguous key range.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use super::codec;
use super::{Appended, Store, StoreError, StoreStats};
use crate::config::FullPolicy;
use crate::sample::{Record, Sample, now_ms};

const NEXT_SEQ: &[u8] = b"next_seq";
/// `<state_dir>/watermark`: "<last committed seq> <seq delivered by every uplink>",
/// rewritten about once a second. It is how a log damaged or lost on disk is noticed and
/// counted (to within a second of commits), and how numbering continues after it.
const WATERMARK_FILE: &str = "watermark";

#[derive(Debug, Clone, Copy)]
struct Watermark {
    last_seq: u64,
    delivered_by_all: u64,
}

fn read_watermark(state_dir: &Path) -> Option<Watermark> {
    let text = std::fs::read_to_string(state_dir.join(WATERMARK_FILE)).ok()?;
    let mut parts = text.split_whitespace().map(|p| p.parse::<u64>());
    match (parts.next(), parts.next()) {
        (Some(Ok(last_seq)), Some(Ok(delivered_by_all))) => Some(Watermark {
            last_seq,
            delivered_by_all,
        }),
        _ => None,
    }
}
const CURSOR_PREFIX: &str = "cursor/";
/// sled's page cache. Its default (1 GiB) is sized for servers, not gateways.
const CACHE_BYTES: u64 = 16 << 20;

pub struct SledStore {
    /// Outside the sled database, so that it survives the loss of the database itself.
    watermark_path: std::path::PathBuf,
    db: sled::Db,
    records: sled::Tree,
    meta: sled::Tree,
    dead: sled::Tree,
    quarantine: sled::Tree,
    max_bytes: u64,
    policy: FullPolicy,
    state: Mutex<State>,
}

struct State {
    next_seq: u64,
    live_bytes: u64,
    live_records: u64,
    cursors: BTreeMap<String, u64>,
    evicted_total: u64,
    corrupt_skipped: u64,
    lost_on_disk: u64,
}

fn key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

fn seq_of(key: &[u8]) -> u64 {
    let mut buf = [0u8; 8];
    let n = key.len().min(8);
    buf[8 - n..].copy_from_slice(&key[..n]);
    u64::from_be_bytes(buf)
}

fn entry_bytes(value_len: usize) -> u64 {
    value_len as u64 + 8
}

/// How long to wait for the store's file lock. A process that just stopped (or a store
/// dropped a moment ago in this process) can hold it briefly while its flusher ends.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

fn open_db(path: &Path) -> Result<sled::Db, StoreError> {
    let started = std::time::Instant::now();
    loop {
        match sled::Config::new()
            .path(path)
            .cache_capacity(CACHE_BYTES)
            .open()
        {
            Ok(db) => return Ok(db),
            Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                if started.elapsed() >= LOCK_WAIT {
                    return Err(StoreError::Locked {
                        path: path.display().to_string(),
                    });
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(source) => {
                return Err(StoreError::Open {
                    path: path.display().to_string(),
                    source,
                });
            }
        }
    }
}

impl SledStore {
    /// Opens (or creates) the store in `state_dir` for the given uplinks. Cursors of
    /// uplinks no longer configured are dropped, so they cannot pin records forever; a
    /// new uplink starts at the oldest record held.
    pub fn open(
        state_dir: &Path,
        uplinks: &[String],
        max_bytes: u64,
        policy: FullPolicy,
    ) -> Result<Self, StoreError> {
        let path = state_dir.join("store");
        let db = open_db(&path)?;
        let records = db.open_tree("records")?;
        let meta = db.open_tree("meta")?;
        let dead = db.open_tree("dead_letter")?;
        let quarantine = db.open_tree("quarantine")?;

        let mut live_bytes = 0;
        let mut live_records = 0;
        for item in records.iter() {
            let (_, value) = item?;
            live_bytes += entry_bytes(value.len());
            live_records += 1;
        }
        let last_key = records.last()?.map(|(k, _)| seq_of(&k));
        let first_key = records.first()?.map(|(k, _)| seq_of(&k));
        let stored_next = meta.get(NEXT_SEQ)?.map(|v| seq_of(&v)).unwrap_or(1);
        let watermark = read_watermark(state_dir);
        // Never reuse a sequence number, even after the log was lost: backends deduplicate
        // on (gateway, seq).
        let next_seq = stored_next
            .max(last_key.map_or(1, |k| k + 1))
            .max(watermark.map_or(1, |w| w.last_seq + 1))
            .max(1);

        let mut cursors = BTreeMap::new();
        for item in meta.scan_prefix(CURSOR_PREFIX) {
            let (k, v) = item?;
            let name = String::from_utf8_lossy(&k[CURSOR_PREFIX.len()..]).to_string();
            if uplinks.contains(&name) {
                cursors.insert(name, seq_of(&v));
            } else {
                log::info!(
                    "store: dropping the cursor of uplink \"{name}\", which is no longer configured"
                );
                meta.remove(&k)?;
            }
        }
        let delivered_by_all_on_disk = cursors.values().copied().min().unwrap_or(0);
        for name in uplinks {
            cursors
                .entry(name.clone())
                .or_insert_with(|| first_key.map_or(next_seq - 1, |f| f - 1));
        }
        let store = SledStore {
            watermark_path: state_dir.join(WATERMARK_FILE),
            db,
            records,
            meta,
            dead,
            quarantine,
            max_bytes,
            policy,
            state: Mutex::new(State {
                next_seq,
                live_bytes,
                live_records,
                cursors,
                evicted_total: 0,
                corrupt_skipped: 0,
                lost_on_disk: 0,
            }),
        };
        {
            let mut state = store.lock();
            for (name, seq) in state.cursors.clone() {
                store
                    .meta
                    .insert(format!("{CURSOR_PREFIX}{name}"), &key(seq))?;
            }
            store.collect_garbage(&mut state)?;
            // Records leave only from the head; a tail shorter than the highest sequence
            // number ever committed means the disk lost some (a torn or damaged log).
            let newest_delivered =
                delivered_by_all_on_disk.max(watermark.map_or(0, |w| w.delivered_by_all));
            let newest_present = last_key.unwrap_or(0).max(newest_delivered);
            let newest_committed = (stored_next - 1).max(watermark.map_or(0, |w| w.last_seq));
            let lost = newest_committed.saturating_sub(newest_present);
            if lost > 0 {
                log::error!(
                    "store: {lost} committed records (sequence {}..={}) are missing from the log on disk \
                     (damaged or truncated); they cannot be sent",
                    newest_present + 1,
                    newest_committed
                );
                state.lost_on_disk = lost;
            }
        }
        Ok(store)
    }

    /// Opens the store; if it is damaged beyond what sled can open (it reports corruption,
    /// or panics while recovering its log), moves it aside to `store.damaged-<unix time>`
    /// for a person to look at, logs an ERROR, and starts with an empty store. A damaged
    /// disk must not keep the gateway from running: a crash loop would lose the data
    /// that is still arriving.
    pub fn open_or_recover(
        state_dir: &Path,
        uplinks: &[String],
        max_bytes: u64,
        policy: FullPolicy,
    ) -> Result<Self, StoreError> {
        let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            SledStore::open(state_dir, uplinks, max_bytes, policy)
        }));
        let reason = match attempt {
            Ok(Ok(store)) => return Ok(store),
            Ok(Err(StoreError::Open {
                source: source @ (sled::Error::Corruption { .. } | sled::Error::ReportableBug(_)),
                ..
            }))
            | Ok(Err(StoreError::Io(
                source @ (sled::Error::Corruption { .. } | sled::Error::ReportableBug(_)),
            ))) => source.to_string(),
            Ok(Err(other)) => return Err(other),
            Err(panic) => panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic while opening".into()),
        };
        let damaged = state_dir.join(format!("store.damaged-{}", now_ms() / 1000));
        log::error!(
            "store in {} is damaged and cannot be opened ({reason}); moved to {} and starting with an empty store. \
             The records in it are not sent.",
            state_dir.join("store").display(),
            damaged.display()
        );
        std::fs::rename(state_dir.join("store"), &damaged).map_err(|e| StoreError::Open {
            path: state_dir.join("store").display().to_string(),
            source: sled::Error::Io(e),
        })?;
        SledStore::open(state_dir, uplinks, max_bytes, policy)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain counters behind, still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Removes the records every uplink has acknowledged.
    fn collect_garbage(&self, state: &mut State) -> Result<(), StoreError> {
        let Some(min_cursor) = state.cursors.values().copied().min() else {
            return Ok(());
        };
        let mut batch = sled::Batch::default();
        let mut freed = 0;
        let mut removed = 0;
        for item in self.records.range(..=key(min_cursor)) {
            let (k, v) = item?;
            freed += entry_bytes(v.len());
            batch.remove(k);
            removed += 1;
        }
        if removed > 0 {
            self.records.apply_batch(batch)?;
            state.live_bytes = state.live_bytes.saturating_sub(freed);
            state.live_records = state.live_records.saturating_sub(removed);
        }
        Ok(())
    }

    fn cursor(&self, uplink: &str) -> Result<u64, StoreError> {
        self.lock()
            .cursors
            .get(uplink)
            .copied()
            .ok_or_else(|| StoreError::UnknownCursor(uplink.to_string()))
    }

    /// Moves a damaged record out of the way, counted, so it is never sent or retried.
    fn quarantine(
        &self,
        k: &[u8],
        value: &[u8],
        error: &codec::CorruptRecord,
    ) -> Result<(), StoreError> {
        log::error!(
            "store: record {} is damaged ({error}); moved to quarantine, not sent",
            seq_of(k)
        );
        self.quarantine.insert(k, value)?;
        if self.records.remove(k)?.is_some() {
            let mut state = self.lock();
            state.live_bytes = state.live_bytes.saturating_sub(entry_bytes(value.len()));
            state.live_records = state.live_records.saturating_sub(1);
            state.corrupt_skipped += 1;
        }
        Ok(())
    }
}

impl Store for SledStore {
    fn append(&self, samples: &[Sample], durable: bool) -> Result<Appended, StoreError> {
        let encoded: Vec<Vec<u8>> = samples.iter().map(codec::encode).collect();
        let incoming: u64 = encoded.iter().map(|v| entry_bytes(v.len())).sum();
        let mut state = self.lock();
        let mut evicted = 0;
        // The bound may be passed by at most one commit batch: refusing a batch larger
        // than the whole store would block forever.
        if state.live_bytes > 0 && state.live_bytes + incoming > self.max_bytes {
            match self.policy {
                FullPolicy::Block if state.live_bytes >= self.max_bytes => {
                    return Err(StoreError::Full {
                        used: state.live_bytes,
                        max: self.max_bytes,
                    });
                }
                FullPolicy::Block => {}
                FullPolicy::DropOldest => {
                    while state.live_bytes > 0 && state.live_bytes + incoming > self.max_bytes {
                        match self.records.pop_min()? {
                            Some((_, v)) => {
                                state.live_bytes =
                                    state.live_bytes.saturating_sub(entry_bytes(v.len()));
                                state.live_records = state.live_records.saturating_sub(1);
                                evicted += 1;
                            }
                            None => {
                                state.live_bytes = 0;
                                state.live_records = 0;
                            }
                        }
                    }
                }
            }
        }
        let first_seq = state.next_seq;
        let mut batch = sled::Batch::default();
        for (i, value) in encoded.into_iter().enumerate() {
            batch.insert(&key(first_seq + i as u64), value);
        }
        self.records.apply_batch(batch)?;
        let next_seq = first_seq + samples.len() as u64;
        self.meta.insert(NEXT_SEQ, &key(next_seq))?;
        state.next_seq = next_seq;
        state.live_bytes += incoming;
        state.live_records += samples.len() as u64;
        state.evicted_total += evicted;
        drop(state);
        if durable {
            self.db.flush()?;
        }
        Ok(Appended {
            first_seq,
            last_seq: next_seq - 1,
            evicted,
        })
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    fn checkpoint(&self) -> Result<(), StoreError> {
        let (last_seq, delivered_by_all) = {
            let state = self.lock();
            (
                state.next_seq - 1,
                state.cursors.values().copied().min().unwrap_or(0),
            )
        };
        // Written only once the records it counts are flushed, and replaced atomically.
        self.db.flush()?;
        let tmp = self.watermark_path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::File::create(&tmp)?;
            std::io::Write::write_all(
                &mut file,
                format!("{last_seq} {delivered_by_all}\n").as_bytes(),
            )?;
            file.sync_all()?;
            std::fs::rename(&tmp, &self.watermark_path)
        };
        write().map_err(|e| StoreError::Io(sled::Error::Io(e)))
    }

    fn read(&self, uplink: &str, max: usize) -> Result<Vec<Record>, StoreError> {
        let cursor = self.cursor(uplink)?;
        let mut out = Vec::with_capacity(max.min(4096));
        let mut damaged = Vec::new();
        for item in self.records.range(key(cursor.saturating_add(1))..) {
            if out.len() >= max {
                break;
            }
            let (k, v) = item?;
            match codec::decode(&v) {
                Ok(sample) => out.push(Record {
                    seq: seq_of(&k),
                    sample,
                }),
                Err(e) => damaged.push((k, v, e)),
            }
        }
        for (k, v, e) in damaged {
            self.quarantine(&k, &v, &e)?;
        }
        Ok(out)
    }

    fn cursor(&self, uplink: &str) -> Result<u64, StoreError> {
        SledStore::cursor(self, uplink)
    }

    fn pending(&self, uplink: &str) -> Result<u64, StoreError> {
        let cursor = self.cursor(uplink)?;
        let Some((first, _)) = self
            .records
            .range(key(cursor.saturating_add(1))..)
            .next()
            .transpose()?
        else {
            return Ok(0);
        };
        let last = self.records.last()?.map_or(0, |(k, _)| seq_of(&k));
        Ok(last.saturating_sub(seq_of(&first)) + 1)
    }

    fn ack(&self, uplink: &str, through_seq: u64) -> Result<(), StoreError> {
        let mut state = self.lock();
        let cursor = state
            .cursors
            .get_mut(uplink)
            .ok_or_else(|| StoreError::UnknownCursor(uplink.to_string()))?;
        if through_seq <= *cursor {
            return Ok(());
        }
        *cursor = through_seq;
        self.meta
            .insert(format!("{CURSOR_PREFIX}{uplink}"), &key(through_seq))?;
        self.collect_garbage(&mut state)
    }

    fn dead_letter(
        &self,
        uplink: &str,
        records: &[Record],
        reason: &str,
    ) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        let at = now_ms();
        for record in records {
            let mut k = uplink.as_bytes().to_vec();
            k.push(0);
            k.extend_from_slice(&key(record.seq));
            let value = serde_json::json!({ "reason": reason, "at": at, "record": record });
            batch.insert(
                k,
                serde_json::to_vec(&value).expect("JSON value serialises"),
            );
        }
        self.dead.apply_batch(batch)?;
        if let Some(last) = records.last() {
            self.ack(uplink, last.seq)?;
        }
        Ok(())
    }

    fn stats(&self) -> Result<StoreStats, StoreError> {
        let state = self.lock();
        let first_seq = self.records.first()?.map(|(k, _)| seq_of(&k));
        let last_seq = state.next_seq - 1;
        let records = state.live_records;
        let mut cursors = Vec::new();
        for (name, cursor) in &state.cursors {
            // Exact unless records were quarantined in between (then an upper bound).
            let pending = match first_seq {
                Some(f) => last_seq.saturating_sub((*cursor).max(f - 1)).min(records),
                None => 0,
            };
            cursors.push((name.clone(), *cursor, pending));
        }
        Ok(StoreStats {
            records,
            bytes: state.live_bytes,
            first_seq,
            last_seq,
            evicted_total: state.evicted_total,
            dead_letters: self.dead.len() as u64,
            cursors,
            corrupt_skipped: state.corrupt_skipped,
            lost_on_disk: state.lost_on_disk,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::Value;

    fn sample(i: i64) -> Sample {
        let mut s = Sample::new("t", "d", i);
        s.fields.insert("i".into(), Value::Int(i));
        s
    }

    fn open(dir: &Path, uplinks: &[&str], max: u64, policy: FullPolicy) -> SledStore {
        let names: Vec<String> = uplinks.iter().map(|s| s.to_string()).collect();
        SledStore::open(dir, &names, max, policy).unwrap()
    }

    #[test]
    fn records_leave_only_when_every_uplink_has_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), &["a", "b"], 1 << 30, FullPolicy::DropOldest);
        let samples: Vec<Sample> = (0..10).map(sample).collect();
        let appended = store.append(&samples, true).unwrap();
        assert_eq!((appended.first_seq, appended.last_seq), (1, 10));
        let batch = store.read("a", 4).unwrap();
        assert_eq!(
            batch.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
        store.ack("a", 4).unwrap();
        assert_eq!(store.pending("a").unwrap(), 6);
        assert_eq!(
            store.stats().unwrap().records,
            10,
            "b has acknowledged nothing yet"
        );
        store.ack("b", 6).unwrap();
        assert_eq!(store.stats().unwrap().records, 6);
        assert_eq!(store.read("a", 100).unwrap()[0].seq, 5);
        assert_eq!(store.read("b", 100).unwrap()[0].seq, 7);
    }

    #[test]
    fn sequence_numbers_survive_reopen_and_are_never_reused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open(dir.path(), &["a"], 1 << 30, FullPolicy::DropOldest);
            store.append(&[sample(1), sample(2)], true).unwrap();
            store.ack("a", 2).unwrap();
            assert_eq!(store.stats().unwrap().records, 0);
        }
        let store = open(dir.path(), &["a"], 1 << 30, FullPolicy::DropOldest);
        let appended = store.append(&[sample(3)], true).unwrap();
        assert_eq!(appended.first_seq, 3);
        assert_eq!(store.read("a", 10).unwrap().len(), 1);
    }

    #[test]
    fn drop_oldest_evicts_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let one = entry_bytes(codec::encode(&sample(0)).len());
        let store = open(dir.path(), &["a"], one * 5, FullPolicy::DropOldest);
        for i in 0..8 {
            store.append(&[sample(i)], false).unwrap();
        }
        let stats = store.stats().unwrap();
        assert_eq!(stats.evicted_total, 3);
        assert_eq!(stats.records, 5);
        assert_eq!(store.read("a", 10).unwrap()[0].seq, 4);
    }

    #[test]
    fn block_policy_refuses_when_full() {
        let dir = tempfile::tempdir().unwrap();
        let one = entry_bytes(codec::encode(&sample(0)).len());
        let store = open(dir.path(), &["a"], one * 2, FullPolicy::Block);
        store.append(&[sample(0)], false).unwrap();
        store.append(&[sample(1)], false).unwrap();
        assert!(matches!(
            store.append(&[sample(2)], false),
            Err(StoreError::Full { .. })
        ));
        store.ack("a", 1).unwrap();
        store.append(&[sample(2)], false).unwrap();
    }

    #[test]
    fn a_new_uplink_starts_at_the_oldest_record_and_removed_ones_release_theirs() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open(dir.path(), &["a"], 1 << 30, FullPolicy::DropOldest);
            store.append(&[sample(1), sample(2)], true).unwrap();
        }
        let store = open(dir.path(), &["b"], 1 << 30, FullPolicy::DropOldest);
        assert_eq!(store.pending("b").unwrap(), 2);
        store.ack("b", 2).unwrap();
        assert_eq!(store.stats().unwrap().records, 0);
    }

    #[test]
    fn dead_letters_are_kept_and_the_queue_moves_on() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), &["a"], 1 << 30, FullPolicy::DropOldest);
        store
            .append(&[sample(1), sample(2), sample(3)], true)
            .unwrap();
        let batch = store.read("a", 2).unwrap();
        store.dead_letter("a", &batch, "HTTP 400").unwrap();
        assert_eq!(store.stats().unwrap().dead_letters, 2);
        assert_eq!(store.read("a", 10).unwrap()[0].seq, 3);
    }

    #[test]
    fn damaged_records_are_quarantined_not_sent() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), &["a"], 1 << 30, FullPolicy::DropOldest);
        store
            .append(&[sample(1), sample(2), sample(3)], true)
            .unwrap();
        let mut bad = store.records.get(key(2)).unwrap().unwrap().to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        store.records.insert(key(2), bad).unwrap();
        let seqs: Vec<u64> = store.read("a", 10).unwrap().iter().map(|r| r.seq).collect();
        assert_eq!(seqs, vec![1, 3]);
        assert_eq!(store.stats().unwrap().corrupt_skipped, 1);
        assert_eq!(store.quarantine.len(), 1);
    }
}
