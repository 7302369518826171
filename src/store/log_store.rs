//! The store tidegate ships: two lanes of segment files ([`lane`]), the snapshot of
//! cursors beside them ([`snapshot`]), dead letters in sled ([`dead`]).
//!
//! Why a log of our own rather than records in sled: measured on the same damage, sled
//! lost every record of a 3,060-record store to 20 flipped bytes (it panics on open),
//! gave no space back after deletes, and flushes with `sync_file_range`, which does not
//! flush the drive's cache. Here a flipped byte costs the record it is in, deleted
//! segments give their space back at once, and a flush is `fdatasync`.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::dead::DeadLetters;
use super::frame::{self, FrameMeta};
use super::lane::{LaneLog, LanePosition, NeedsRescan, RawRecord};
use super::snapshot::{Snapshot, SnapshotFiles};
use super::{
    Appended, Batch, Committed, Lane, Store, StoreError, StoreOptions, StoreStats, UplinkBacklog,
};
use crate::config::FullPolicy;
use crate::sample::{Record, RecordForm, Sample};

/// How long to wait for the store's lock: a process that just stopped can hold it for a
/// moment while it exits.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// Milliseconds the gateway has been running, over its whole life: the clock `max_age`
/// is measured on. It advances only with the monotonic clock, so a wall-clock step (an
/// NTP correction, a board booting in 1970) cannot age records.
struct StoreClock {
    base_ms: u64,
    started: Instant,
}

impl StoreClock {
    fn now_ms(&self) -> u64 {
        self.base_ms + self.started.elapsed().as_millis() as u64
    }
}

pub struct LogStore {
    state_dir: PathBuf,
    _lock: File,
    options: StoreOptions,
    clock: StoreClock,
    dead: DeadLetters,
    /// Serialises appends and flushes, so the fsync can run outside `inner`.
    append_lock: Mutex<()>,
    inner: Mutex<Inner>,
}

struct Inner {
    lanes: [LaneLog; 2],
    snap: Snapshot,
    files: SnapshotFiles,
    /// Heads as the last durable snapshot has them: segment files are deleted only
    /// behind these, so a power cut never leaves a cursor pointing at a deleted file.
    durable_heads: [u64; 2],
    lost_on_disk: u64,
    buf: Vec<u8>,
    /// Something changed since the last durable snapshot.
    dirty: bool,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Takes `<state_dir>/lock`, waiting up to `wait`; names the holder when it is taken.
pub(super) fn take_lock(state_dir: &Path, wait: Duration) -> Result<File, StoreError> {
    let path = state_dir.join("lock");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err(&path))?;
    let started = Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => break,
            Err(std::fs::TryLockError::WouldBlock) if started.elapsed() < wait => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(StoreError::Locked {
                    path: state_dir.display().to_string(),
                    pid: text.trim().parse().ok(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err(&path)(e)),
        }
    }
    file.set_len(0).map_err(io_err(&path))?;
    writeln!(file, "{}", std::process::id()).map_err(io_err(&path))?;
    Ok(file)
}

/// Heads of both lanes: everything at or below is gone.
pub(super) fn heads(snap: &Snapshot) -> [u64; 2] {
    let mut heads = [snap.lanes[0].dropped_through, snap.lanes[1].dropped_through];
    for (l, head) in heads.iter_mut().enumerate() {
        if let Some(min) = snap.uplinks.values().map(|c| c[l]).min() {
            *head = (*head).max(min);
        }
    }
    heads
}

/// Removes from `ranges` what is already in `known` (same lane), returning what is new.
fn subtract_known(ranges: &[(u64, u64)], known: &[(u8, u64, u64)], lane: u8) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for &(a, b) in ranges {
        let mut pieces = vec![(a, b)];
        for &(_, ka, kb) in known.iter().filter(|k| k.0 == lane) {
            pieces = pieces
                .into_iter()
                .flat_map(|(x, y)| {
                    let mut keep = Vec::new();
                    if kb < x || ka > y {
                        keep.push((x, y));
                    } else {
                        if x < ka {
                            keep.push((x, ka - 1));
                        }
                        if kb < y {
                            keep.push((kb + 1, y));
                        }
                    }
                    keep
                })
                .collect();
        }
        out.extend(pieces);
    }
    out
}

fn count(ranges: &[(u64, u64)]) -> u64 {
    ranges.iter().map(|(a, b)| b - a + 1).sum()
}

fn describe(ranges: &[(u64, u64)]) -> String {
    let mut parts: Vec<String> = ranges
        .iter()
        .take(5)
        .map(|(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}..={b}")
            }
        })
        .collect();
    if ranges.len() > 5 {
        parts.push(format!("and {} more ranges", ranges.len() - 5));
    }
    parts.join(", ")
}

pub(super) const LANES: [(u8, &str); 2] = [(0, "main"), (1, "priority")];

impl LogStore {
    /// Opens (or creates) the store in `state_dir` for the given uplinks. Damage found on
    /// disk is stepped over, quarantined, counted and logged; it never stops the open.
    /// Cursors of uplinks no longer configured are dropped, so they cannot pin records
    /// forever; a new uplink starts at the oldest record held.
    pub fn open(
        state_dir: &Path,
        uplinks: &[String],
        options: StoreOptions,
    ) -> Result<Self, StoreError> {
        Self::open_with_lock_wait(state_dir, uplinks, options, LOCK_WAIT)
    }

    pub fn open_with_lock_wait(
        state_dir: &Path,
        uplinks: &[String],
        options: StoreOptions,
        lock_wait: Duration,
    ) -> Result<Self, StoreError> {
        std::fs::create_dir_all(state_dir).map_err(io_err(state_dir))?;
        let lock = take_lock(state_dir, lock_wait)?;
        let dead = DeadLetters::open_with_wait(state_dir, lock_wait)?;
        let (files, newest) = SnapshotFiles::open(state_dir).map_err(io_err(state_dir))?;
        let mut snap = newest.unwrap_or_default();
        let old_heads = heads(&snap);
        for name in uplinks {
            snap.uplinks.entry(name.clone()).or_insert(old_heads);
        }
        let gone: Vec<String> = snap
            .uplinks
            .keys()
            .filter(|k| !uplinks.contains(k))
            .cloned()
            .collect();
        for name in gone {
            log::info!(
                "store: dropping the cursor of uplink \"{name}\", which is no longer configured"
            );
            snap.uplinks.remove(&name);
        }
        let quarantine_dir = state_dir.join("quarantine");
        let target = options.segment_target();
        let mut lost_on_disk = 0;
        let mut open_lane = |id: u8, name: &'static str| -> Result<LaneLog, StoreError> {
            let (lane, missing) = LaneLog::open(
                id,
                name,
                &state_dir.join("log").join(name),
                &quarantine_dir,
                LanePosition {
                    head: old_heads[id as usize],
                    watermark: snap.lanes[id as usize].last_pos,
                },
                target,
                false,
            )?;
            let new = subtract_known(&missing, &snap.known_gaps, id);
            if !new.is_empty() {
                let n = count(&new);
                log::error!(
                    "store: {n} committed records of the {name} lane (positions {}) are damaged or missing on disk; \
                     they cannot be sent (damaged bytes are kept in {})",
                    describe(&new),
                    quarantine_dir.display()
                );
                lost_on_disk += n;
                snap.known_gaps.extend(new.iter().map(|&(a, b)| (id, a, b)));
            }
            Ok(lane)
        };
        let main = open_lane(0, "main")?;
        let priority = open_lane(1, "priority")?;
        snap.totals.damaged += lost_on_disk;
        let mut lanes = [main, priority];
        let new_heads = heads(&snap);
        for (l, lane) in lanes.iter_mut().enumerate() {
            lane.advance_head(new_heads[l]).map_err(io_err(state_dir))?;
            snap.lanes[l].last_pos = lane.next_pos - 1;
        }
        snap.known_gaps
            .retain(|&(l, _, b)| b > new_heads[l as usize]);
        // Never reuse a sequence number, even after the log was lost: backends
        // deduplicate on (gateway, seq).
        snap.next_seq = snap
            .next_seq
            .max(lanes[0].max_seq + 1)
            .max(lanes[1].max_seq + 1)
            .max(1);
        snap.dead_letters = dead.count();
        let clock = StoreClock {
            base_ms: snap.clock_ms,
            started: Instant::now(),
        };
        snap.generation += 1;
        files.write_durable(&snap).map_err(io_err(state_dir))?;
        let durable_heads = heads(&snap);
        Ok(LogStore {
            state_dir: state_dir.to_path_buf(),
            _lock: lock,
            options,
            clock,
            dead,
            append_lock: Mutex::new(()),
            inner: Mutex::new(Inner {
                lanes,
                snap,
                files,
                durable_heads,
                lost_on_disk,
                buf: Vec::with_capacity(256 << 10),
                dirty: false,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves state that is still consistent on disk.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn io(&self) -> impl FnOnce(io::Error) -> StoreError + '_ {
        io_err(&self.state_dir)
    }

    /// Drops the oldest records until `needed` bytes are free: the main lane first,
    /// the priority lane only when the main one is empty.
    fn evict(&self, inner: &mut Inner, needed: u64) -> Result<u64, StoreError> {
        let mut freed = 0;
        let mut evicted = 0;
        for l in 0..2 {
            if freed >= needed {
                break;
            }
            let still = needed - freed;
            let (n, bytes, through) = inner.lanes[l]
                .walk_head(|_, _, taken| taken < still)
                .map_err(self.io())?;
            if n > 0 {
                inner.snap.lanes[l].dropped_through = through;
                let head = heads(&inner.snap)[l];
                inner.lanes[l].advance_head(head).map_err(self.io())?;
                freed += bytes;
                evicted += n;
            }
        }
        inner.snap.totals.evicted += evicted;
        Ok(evicted)
    }

    /// Applies `max_age`: drops records older than that, counted.
    fn expire(&self, inner: &mut Inner) -> Result<u64, StoreError> {
        let Some(max_age) = self.options.max_age else {
            return Ok(0);
        };
        let cutoff = self
            .clock
            .now_ms()
            .saturating_sub(max_age.as_millis() as u64);
        let mut expired = 0;
        for l in 0..2 {
            let (n, _, through) = inner.lanes[l]
                .walk_head(|meta: &FrameMeta, _, _| meta.stamp < cutoff)
                .map_err(self.io())?;
            if n > 0 {
                inner.snap.lanes[l].dropped_through = through;
                let head = heads(&inner.snap)[l];
                inner.lanes[l].advance_head(head).map_err(self.io())?;
                expired += n;
            }
        }
        if expired > 0 {
            inner.snap.totals.expired += expired;
            log::warn!(
                "store: dropped {expired} records older than max_age ({}), not delivered in time",
                humantime::format_duration(max_age)
            );
        }
        Ok(expired)
    }

    /// Syncs what appends left unsynced, then lets readers see it. Called with the
    /// append lock held.
    fn sync_and_publish(&self) -> Result<(), StoreError> {
        let mut pending = Vec::new();
        let mut targets = [0u64; 2];
        {
            let mut inner = self.lock();
            for (l, lane) in inner.lanes.iter_mut().enumerate() {
                let (files, dir) = lane.take_unsynced();
                targets[l] = lane.next_pos - 1;
                pending.push((l, files, dir));
            }
        }
        let mut failure = None;
        let mut unsynced_back = Vec::new();
        for (l, files, dir) in pending {
            let result = (|| -> io::Result<()> {
                for f in &files {
                    f.sync_data()?;
                }
                if let Some(dir) = &dir {
                    File::open(dir)?.sync_all()?;
                }
                Ok(())
            })();
            if let Err(e) = result {
                failure = Some(e);
                unsynced_back.push((l, files, dir.is_some()));
            }
        }
        let mut inner = self.lock();
        if let Some(e) = failure {
            for (l, files, dir) in unsynced_back {
                inner.lanes[l].return_unsynced(files, dir);
            }
            return Err(self.io()(e));
        }
        for (l, lane) in inner.lanes.iter_mut().enumerate() {
            lane.published = lane.published.max(targets[l]);
        }
        for l in 0..2 {
            inner.snap.lanes[l].last_pos = inner.lanes[l].published;
        }
        Ok(())
    }

    /// Reads a lane for an uplink, scanning a segment again if damage shows up.
    fn read_lane(
        &self,
        inner: &mut Inner,
        l: usize,
        from: u64,
        max: usize,
    ) -> Result<Vec<RawRecord>, StoreError> {
        loop {
            match inner.lanes[l].read(from, max) {
                Ok(raw) => return Ok(raw),
                Err(NeedsRescan(first)) => {
                    let missing = inner.lanes[l].rescan(first).map_err(self.io())?;
                    let new = subtract_known(&missing, &inner.snap.known_gaps, l as u8);
                    if !new.is_empty() {
                        let n = count(&new);
                        log::error!(
                            "store: {n} records of the {} lane (positions {}) were damaged on disk; \
                             quarantined, not sent",
                            LANES[l].1,
                            describe(&new)
                        );
                        inner.snap.totals.damaged += n;
                        inner.dirty = true;
                        inner
                            .snap
                            .known_gaps
                            .extend(new.iter().map(|&(a, b)| (l as u8, a, b)));
                    }
                }
            }
        }
    }

    /// Drops every record still to send (`buffer purge`). Returns how many.
    pub fn purge(&self) -> Result<u64, StoreError> {
        let _append = self.append_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut inner = self.lock();
        let mut purged = 0;
        for l in 0..2 {
            purged += inner.lanes[l].live().0;
            let through = inner.lanes[l].next_pos - 1;
            inner.snap.lanes[l].dropped_through = through;
            inner.lanes[l].advance_head(through).map_err(self.io())?;
        }
        inner.snap.totals.purged += purged;
        inner.dirty = true;
        drop(inner);
        drop(_append);
        self.checkpoint()?;
        Ok(purged)
    }

    pub fn dead_letters(&self) -> &DeadLetters {
        &self.dead
    }

    /// The store clock, for tests of `max_age`.
    pub fn clock_ms(&self) -> u64 {
        self.clock.now_ms()
    }
}

impl Store for LogStore {
    fn append(&self, entries: &[(Lane, Sample)], durable: bool) -> Result<Appended, StoreError> {
        let _append = self.append_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut guard = self.lock();
        let inner = &mut *guard;
        let stamp = self.clock.now_ms();
        let first_seq = inner.snap.next_seq;
        // Encode both lanes first: eviction needs the size of what comes in.
        let mut bufs = [std::mem::take(&mut inner.buf), Vec::new()];
        let mut prepared = Vec::with_capacity(2);
        for (l, buf) in bufs.iter_mut().enumerate() {
            let lane_id = if l == 0 { Lane::Main } else { Lane::Priority };
            let mut records = entries
                .iter()
                .enumerate()
                .filter(|(_, (lane, _))| *lane == lane_id)
                .map(|(i, (_, s))| (first_seq + i as u64, stamp, s))
                .peekable();
            if records.peek().is_none() {
                prepared.push(None);
                continue;
            }
            prepared.push(Some(
                inner.lanes[l].prepare(buf, records).map_err(self.io())?,
            ));
        }
        let incoming: u64 = prepared.iter().flatten().map(|p| p.size).sum();
        let used = inner.lanes[0].live().1 + inner.lanes[1].live().1;
        let mut evicted = 0;
        // The bound may be passed by at most one commit batch: refusing a batch larger
        // than the whole store would block forever.
        if used > 0 && used + incoming > self.options.max_bytes {
            match self.options.policy {
                FullPolicy::Block if used >= self.options.max_bytes => {
                    inner.buf = std::mem::take(&mut bufs[0]);
                    return Err(StoreError::Full {
                        used,
                        max: self.options.max_bytes,
                    });
                }
                FullPolicy::Block => {}
                FullPolicy::DropOldest => {
                    evicted = self.evict(inner, used + incoming - self.options.max_bytes)?;
                    // Like an acknowledgement: a crash must not bring them back.
                    inner.snap.generation += 1;
                    inner.files.write_volatile(&inner.snap).map_err(self.io())?;
                }
            }
        }
        // Numbers are taken before writing: should the second lane's write fail after the
        // first one's landed, the retry appends again under new numbers (a duplicate),
        // and no number is ever given to two records.
        inner.snap.next_seq = first_seq + entries.len() as u64;
        inner.dirty = true;
        for (l, p) in prepared.into_iter().enumerate() {
            if let Some(p) = p {
                inner.lanes[l].write(&bufs[l], p).map_err(self.io())?;
            }
        }
        inner.buf = std::mem::take(&mut bufs[0]);
        drop(guard);
        if durable {
            self.sync_and_publish()?;
        }
        Ok(Appended {
            first_seq,
            last_seq: first_seq + entries.len() as u64 - 1,
            evicted,
        })
    }

    fn flush(&self) -> Result<(), StoreError> {
        let _append = self.append_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.sync_and_publish()
    }

    fn checkpoint(&self) -> Result<(), StoreError> {
        self.flush()?;
        let mut guard = self.lock();
        let inner = &mut *guard;
        let expired = self.expire(inner)?;
        let dead_letters = self.dead.count();
        if !inner.dirty && expired == 0 && dead_letters == inner.snap.dead_letters {
            return Ok(());
        }
        inner.dirty = false;
        inner.snap.generation += 1;
        inner.snap.clock_ms = self.clock.now_ms();
        inner.snap.dead_letters = dead_letters;
        inner.files.write_durable(&inner.snap).map_err(self.io())?;
        inner.durable_heads = heads(&inner.snap);
        for l in 0..2 {
            let durable = inner.durable_heads[l];
            inner.lanes[l]
                .delete_dead_segments(durable)
                .map_err(self.io())?;
        }
        Ok(())
    }

    fn read_as(
        &self,
        uplink: &str,
        max: usize,
        form: RecordForm,
    ) -> Result<Option<Batch>, StoreError> {
        let requeued = self.dead.requeued(uplink, max)?;
        if let Some(last) = requeued.last() {
            return Ok(Some(Batch {
                lane: Lane::Requeued,
                through: last.seq,
                records: requeued,
            }));
        }
        let (lane, raw) = {
            let mut inner = self.lock();
            let cursor = *inner
                .snap
                .uplinks
                .get(uplink)
                .ok_or_else(|| StoreError::UnknownCursor(uplink.to_string()))?;
            let mut found = None;
            for (l, lane) in [(1usize, Lane::Priority), (0, Lane::Main)] {
                let from = cursor[l].max(inner.lanes[l].head) + 1;
                if from > inner.lanes[l].published {
                    continue;
                }
                let raw = self.read_lane(&mut inner, l, from, max)?;
                if !raw.is_empty() {
                    found = Some((lane, raw));
                    break;
                }
            }
            match found {
                Some(found) => found,
                None => return Ok(None),
            }
        };
        // Decoded outside the lock: this is the costly part of a read.
        let through = raw.last().map_or(0, |r| r.meta.pos);
        let mut records = Vec::with_capacity(raw.len());
        for r in raw {
            let seq = r.meta.seq;
            let decoded = match form {
                RecordForm::Json => String::from_utf8(r.body)
                    .map(|json| Record::from_json(seq, json.into_boxed_str()))
                    .map_err(|e| {
                        let text = e.to_string();
                        (e.into_bytes(), text)
                    }),
                RecordForm::Sample => frame::decode_body(&r.body)
                    .map(|sample| Record::new(seq, sample))
                    .map_err(|text| (r.body, text)),
            };
            match decoded {
                Ok(record) => records.push(record),
                Err((body, e)) => {
                    // The checksum held, so this is not disk damage: a record this
                    // version cannot read. Kept in quarantine, counted, skipped.
                    log::error!(
                        "store: record {seq} does not decode ({e}); moved to quarantine, not sent"
                    );
                    let dir = self.state_dir.join("quarantine");
                    let _ = std::fs::create_dir_all(&dir).and_then(|_| {
                        std::fs::write(dir.join(format!("undecodable-{seq}.json")), &body)
                    });
                    self.lock().snap.totals.damaged += 1;
                }
            }
        }
        Ok(Some(Batch {
            lane,
            through,
            records,
        }))
    }

    fn pending(&self, uplink: &str) -> Result<u64, StoreError> {
        let requeued = self.dead.requeued(uplink, usize::MAX)?.len() as u64;
        let inner = self.lock();
        let cursor = *inner
            .snap
            .uplinks
            .get(uplink)
            .ok_or_else(|| StoreError::UnknownCursor(uplink.to_string()))?;
        Ok(requeued + pending_in(&inner.lanes, cursor))
    }

    fn ack(&self, uplink: &str, lane: Lane, through: u64) -> Result<(), StoreError> {
        if lane == Lane::Requeued {
            return Ok(self.dead.ack_requeued(uplink, through)?);
        }
        let l = lane as usize;
        let mut guard = self.lock();
        let inner = &mut *guard;
        let cursor = inner
            .snap
            .uplinks
            .get_mut(uplink)
            .ok_or_else(|| StoreError::UnknownCursor(uplink.to_string()))?;
        if through <= cursor[l] {
            return Ok(());
        }
        cursor[l] = through;
        let head = heads(&inner.snap)[l];
        inner.lanes[l].advance_head(head).map_err(self.io())?;
        inner.snap.generation += 1;
        inner.dirty = true;
        inner.files.write_volatile(&inner.snap).map_err(self.io())
    }

    fn dead_letter(&self, uplink: &str, batch: &Batch, reason: &str) -> Result<(), StoreError> {
        self.dead.put(uplink, &batch.records, reason)?;
        self.ack(uplink, batch.lane, batch.through)
    }

    fn stats(&self) -> Result<StoreStats, StoreError> {
        let dead_letters = self.dead.count();
        let requeued = self.dead.requeued_count();
        let inner = self.lock();
        Ok(stats_of(
            &inner.lanes,
            &inner.snap,
            dead_letters,
            requeued,
            inner.lost_on_disk,
        ))
    }

    fn add_uplink(&self, uplink: &str) -> Result<(), StoreError> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        if inner.snap.uplinks.contains_key(uplink) {
            return Ok(());
        }
        let start = heads(&inner.snap);
        inner.snap.uplinks.insert(uplink.to_string(), start);
        inner.snap.generation += 1;
        inner.dirty = true;
        inner.files.write_volatile(&inner.snap).map_err(self.io())
    }

    fn remove_uplink(&self, uplink: &str) -> Result<(), StoreError> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        if inner.snap.uplinks.remove(uplink).is_none() {
            return Ok(());
        }
        let new_heads = heads(&inner.snap);
        for (l, lane) in inner.lanes.iter_mut().enumerate() {
            lane.advance_head(new_heads[l])
                .map_err(io_err(&self.state_dir))?;
        }
        inner.snap.generation += 1;
        inner.dirty = true;
        inner.files.write_volatile(&inner.snap).map_err(self.io())
    }

    fn committed(&self) -> Committed {
        let inner = self.lock();
        Committed {
            seq: inner.snap.next_seq - 1,
            positions: [inner.lanes[0].published, inner.lanes[1].published],
        }
    }
}

/// Records after `cursor` in both lanes, up to what readers can see.
pub(super) fn pending_in(lanes: &[LaneLog; 2], cursor: [u64; 2]) -> u64 {
    let mut pending = 0;
    for (l, lane) in lanes.iter().enumerate() {
        let (live, _) = lane.live();
        // Positions are dense but for damage, so this is exact unless records were lost.
        let after = lane.published.saturating_sub(cursor[l].max(lane.head));
        pending += after.min(live);
    }
    pending
}

pub(super) fn stats_of(
    lanes: &[LaneLog; 2],
    snap: &Snapshot,
    dead_letters: u64,
    requeued: u64,
    lost_on_disk: u64,
) -> StoreStats {
    let (main_records, main_bytes) = lanes[0].live();
    let (prio_records, prio_bytes) = lanes[1].live();
    let uplinks = snap
        .uplinks
        .iter()
        .map(|(name, cursor)| UplinkBacklog {
            name: name.clone(),
            pending: pending_in(lanes, *cursor),
            acked: *cursor,
        })
        .collect();
    StoreStats {
        records: main_records + prio_records,
        bytes: main_bytes + prio_bytes,
        priority_records: prio_records,
        last_seq: snap.next_seq.saturating_sub(1),
        evicted_total: snap.totals.evicted,
        expired_total: snap.totals.expired,
        purged_total: snap.totals.purged,
        dead_letters,
        requeued,
        uplinks,
        damaged_total: snap.totals.damaged,
        lost_on_disk,
        disk_bytes: lanes[0].disk_bytes() + lanes[1].disk_bytes(),
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

    fn main(samples: impl IntoIterator<Item = Sample>) -> Vec<(Lane, Sample)> {
        samples.into_iter().map(|s| (Lane::Main, s)).collect()
    }

    fn open(dir: &Path, uplinks: &[&str], max: u64, policy: FullPolicy) -> LogStore {
        let names: Vec<String> = uplinks.iter().map(|s| s.to_string()).collect();
        LogStore::open(dir, &names, StoreOptions::new(max, policy)).unwrap()
    }

    fn seqs(batch: &Option<Batch>) -> Vec<u64> {
        batch
            .as_ref()
            .map(|b| b.records.iter().map(|r| r.seq).collect())
            .unwrap_or_default()
    }

    #[test]
    fn records_leave_only_when_every_uplink_has_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), &["a", "b"], 1 << 30, FullPolicy::DropOldest);
        let appended = store.append(&main((0..10).map(sample)), true).unwrap();
        assert_eq!((appended.first_seq, appended.last_seq), (1, 10));
        let batch = store.read("a", 4).unwrap();
        assert_eq!(seqs(&batch), vec![1, 2, 3, 4]);
        store.ack("a", Lane::Main, batch.unwrap().through).unwrap();
        assert_eq!(store.pending("a").unwrap(), 6);
        assert_eq!(
            store.stats().unwrap().records,
            10,
            "b has acknowledged nothing"
        );
        store.ack("b", Lane::Main, 6).unwrap();
        assert_eq!(store.stats().unwrap().records, 6);
        assert_eq!(seqs(&store.read("a", 100).unwrap())[0], 5);
        assert_eq!(seqs(&store.read("b", 100).unwrap())[0], 7);
    }

    #[test]
    fn the_priority_lane_is_read_first_and_acknowledged_on_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), &["a"], 1 << 30, FullPolicy::DropOldest);
        let entries: Vec<(Lane, Sample)> = (0..6)
            .map(|i| {
                let lane = if i % 3 == 2 {
                    Lane::Priority
                } else {
                    Lane::Main
                };
                (lane, sample(i))
            })
            .collect();
        store.append(&entries, true).unwrap();
        let first = store.read("a", 100).unwrap().unwrap();
        assert_eq!(first.lane, Lane::Priority);
        assert_eq!(seqs(&Some(first.clone())), vec![3, 6]);
        store.ack("a", first.lane, first.through).unwrap();
        let next = store.read("a", 100).unwrap().unwrap();
        assert_eq!(next.lane, Lane::Main);
        assert_eq!(seqs(&Some(next)), vec![1, 2, 4, 5]);
        assert_eq!(store.stats().unwrap().priority_records, 0);
    }

    #[test]
    fn sequence_numbers_survive_reopen_and_are_never_reused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open(dir.path(), &["a"], 1 << 30, FullPolicy::DropOldest);
            store.append(&main([sample(1), sample(2)]), true).unwrap();
            store.ack("a", Lane::Main, 2).unwrap();
            store.checkpoint().unwrap();
            assert_eq!(store.stats().unwrap().records, 0);
        }
        let store = open(dir.path(), &["a"], 1 << 30, FullPolicy::DropOldest);
        let appended = store.append(&main([sample(3)]), true).unwrap();
        assert_eq!(appended.first_seq, 3);
        assert_eq!(seqs(&store.read("a", 10).unwrap()), vec![3]);
    }

    #[test]
    fn drop_oldest_evicts_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let one = frame::encoded_len(&sample(0));
        let store = open(dir.path(), &["a"], one * 5, FullPolicy::DropOldest);
        for i in 0..8 {
            store.append(&main([sample(i)]), false).unwrap();
        }
        store.flush().unwrap();
        let stats = store.stats().unwrap();
        assert_eq!(stats.evicted_total, 3);
        assert_eq!(stats.records, 5);
        assert_eq!(seqs(&store.read("a", 10).unwrap())[0], 4);
    }

    #[test]
    fn block_policy_refuses_when_full() {
        let dir = tempfile::tempdir().unwrap();
        let one = frame::encoded_len(&sample(0));
        let store = open(dir.path(), &["a"], one * 2, FullPolicy::Block);
        store.append(&main([sample(0)]), true).unwrap();
        store.append(&main([sample(1)]), true).unwrap();
        assert!(matches!(
            store.append(&main([sample(2)]), true),
            Err(StoreError::Full { .. })
        ));
        store.ack("a", Lane::Main, 1).unwrap();
        let appended = store.append(&main([sample(2)]), true).unwrap();
        assert_eq!(
            appended.first_seq, 3,
            "a refused append uses no sequence number"
        );
    }

    #[test]
    fn a_second_process_is_refused_with_the_holder_named() {
        let dir = tempfile::tempdir().unwrap();
        let _store = open(dir.path(), &["a"], 1 << 30, FullPolicy::DropOldest);
        let second = LogStore::open_with_lock_wait(
            dir.path(),
            &["a".to_string()],
            StoreOptions::new(1 << 30, FullPolicy::DropOldest),
            Duration::from_millis(100),
        );
        let err = second.err().expect("refused").to_string();
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
    }

    #[test]
    fn a_new_uplink_starts_at_the_oldest_record_and_removed_ones_release_theirs() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open(dir.path(), &["a"], 1 << 30, FullPolicy::DropOldest);
            store.append(&main([sample(1), sample(2)]), true).unwrap();
        }
        let store = open(dir.path(), &["b"], 1 << 30, FullPolicy::DropOldest);
        assert_eq!(store.pending("b").unwrap(), 2);
        store.ack("b", Lane::Main, 2).unwrap();
        assert_eq!(store.stats().unwrap().records, 0);
    }

    #[test]
    fn dead_letters_are_kept_and_the_queue_moves_on() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), &["a"], 1 << 30, FullPolicy::DropOldest);
        store
            .append(&main([sample(1), sample(2), sample(3)]), true)
            .unwrap();
        let batch = store.read("a", 2).unwrap().unwrap();
        store.dead_letter("a", &batch, "HTTP 400").unwrap();
        assert_eq!(store.stats().unwrap().dead_letters, 2);
        assert_eq!(seqs(&store.read("a", 10).unwrap()), vec![3]);
    }

    #[test]
    fn segments_are_deleted_once_delivered_and_space_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["a".to_string()];
        let mut options = StoreOptions::new(1 << 30, FullPolicy::DropOldest);
        options.segment_bytes = Some(8 << 10);
        let store = LogStore::open(dir.path(), &names, options).unwrap();
        for round in 0..50 {
            store
                .append(&main((0..20).map(|i| sample(round * 20 + i))), true)
                .unwrap();
            while let Some(batch) = store.read("a", 7).unwrap() {
                store.ack("a", batch.lane, batch.through).unwrap();
            }
            store.checkpoint().unwrap();
        }
        let stats = store.stats().unwrap();
        assert_eq!(stats.records, 0);
        assert!(
            stats.disk_bytes <= 2 * (8 << 10) + 4096,
            "disk {} after delivering everything",
            stats.disk_bytes
        );
    }

    #[test]
    fn records_older_than_max_age_are_dropped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["a".to_string()];
        let mut options = StoreOptions::new(1 << 30, FullPolicy::DropOldest);
        options.max_age = Some(Duration::from_millis(300));
        let store = LogStore::open(dir.path(), &names, options).unwrap();
        store.append(&main([sample(1), sample(2)]), true).unwrap();
        std::thread::sleep(Duration::from_millis(400));
        store.append(&main([sample(3)]), true).unwrap();
        store.checkpoint().unwrap();
        let stats = store.stats().unwrap();
        assert_eq!(stats.expired_total, 2);
        assert_eq!(seqs(&store.read("a", 10).unwrap()), vec![3]);
    }

    #[test]
    fn subtracting_known_ranges() {
        let known = [(0u8, 5, 7), (1, 1, 100)];
        assert_eq!(subtract_known(&[(1, 10)], &known, 0), vec![(1, 4), (8, 10)]);
        assert_eq!(subtract_known(&[(5, 6)], &known, 0), vec![]);
        assert_eq!(subtract_known(&[(5, 6)], &known, 2), vec![(5, 6)]);
    }
}
