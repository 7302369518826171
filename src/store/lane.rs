//! One lane of the log: an ordered run of segment files, each named after the position of
//! its first record. Records are appended at the end of the newest segment and leave from
//! the head; a segment file is deleted whole once every record in it is gone, so disk
//! use follows the live records (plus at most the segment being filled).
//!
//! A small sparse index per segment (every [`INDEX_EVERY`] records, and after every
//! damaged range) finds a position without holding an entry per record in memory.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::frame::{self, FrameMeta, Item, SEGMENT_HEADER_LEN, Scanner};
use crate::sample::Sample;

pub const INDEX_EVERY: u64 = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct IndexPoint {
    pos: u64,
    offset: u64,
    frames_before: u64,
    bytes_before: u64,
}

pub struct Segment {
    pub first_pos: u64,
    path: PathBuf,
    file: Arc<File>,
    /// End of the valid bytes: where the next frame goes.
    len: u64,
    /// Last good position in the segment; `first_pos - 1` when it holds none.
    last_pos: u64,
    frames: u64,
    bytes: u64,
    index: Vec<IndexPoint>,
    skips: Vec<(u64, u64)>,
}

/// The first live frame at or after a position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Loc {
    seg_first: u64,
    offset: u64,
    frames_before: u64,
    bytes_before: u64,
}

/// A record as read back, before its body is decoded.
pub struct RawRecord {
    pub meta: FrameMeta,
    pub body: Vec<u8>,
}

/// Damage met while reading: the segment must be scanned again.
#[derive(Debug)]
pub struct NeedsRescan(pub u64);

#[derive(Debug, thiserror::Error)]
pub enum LaneError {
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
}

fn io_err(path: &Path, source: io::Error) -> LaneError {
    LaneError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Finds the positions missing from an ordered stream of positions, above a floor.
struct GapTracker {
    expected: u64,
    gaps: Vec<(u64, u64)>,
}

impl GapTracker {
    fn new(from: u64) -> Self {
        GapTracker {
            expected: from,
            gaps: Vec::new(),
        }
    }

    fn see(&mut self, p: u64) {
        if p < self.expected {
            return;
        }
        if p > self.expected {
            self.gaps.push((self.expected, p - 1));
        }
        self.expected = p + 1;
    }

    fn finish(mut self, through: u64) -> Vec<(u64, u64)> {
        if self.expected <= through {
            self.gaps.push((self.expected, through));
        }
        self.gaps
    }
}

pub struct LaneLog {
    pub id: u8,
    pub name: &'static str,
    dir: PathBuf,
    quarantine_dir: PathBuf,
    segments: VecDeque<Segment>,
    pub next_pos: u64,
    /// Readers see positions up to here: everything flushed.
    pub published: u64,
    /// Positions up to here are gone (delivered by every uplink, evicted, expired).
    pub head: u64,
    head_loc: Option<Loc>,
    /// Highest sequence number found in the lane at open.
    pub max_seq: u64,
    segment_target: u64,
    unsynced: Vec<Arc<File>>,
    dir_unsynced: bool,
    read_only: bool,
}

/// Where a lane stands according to the snapshot.
#[derive(Debug, Clone, Copy, Default)]
pub struct LanePosition {
    /// Positions up to here are gone.
    pub head: u64,
    /// The last position committed.
    pub watermark: u64,
}

/// Records encoded for a lane, not yet written.
pub struct Prepared {
    points: Vec<IndexPoint>,
    frames: u64,
    bytes: u64,
    next_pos: u64,
    /// Bytes the records take: what `max_bytes` counts.
    pub size: u64,
}

fn segment_name(first_pos: u64) -> String {
    format!("{first_pos:020}.seg")
}

fn save_damage(
    quarantine_dir: &Path,
    lane: &str,
    seg_first: u64,
    file: &File,
    start: u64,
    end: u64,
) -> io::Result<()> {
    std::fs::create_dir_all(quarantine_dir)?;
    let mut bytes = vec![0u8; (end - start) as usize];
    let n = file.read_at(&mut bytes, start)?;
    bytes.truncate(n);
    std::fs::write(
        quarantine_dir.join(format!("{lane}-{seg_first:020}-{start}.bin")),
        bytes,
    )
}

/// Scans one segment file: builds its index, steps over damage (copying it to
/// quarantine), and truncates a torn tail when it is the segment being written.
/// Where damage found while scanning goes.
struct Quarantine<'a> {
    lane: &'a str,
    dir: &'a Path,
    /// Inspecting a store another process owns: write nothing.
    read_only: bool,
}

fn scan_segment(
    file: Arc<File>,
    path: &Path,
    first_pos: u64,
    truncate_tail: bool,
    quarantine: &Quarantine<'_>,
    on_frame: &mut dyn FnMut(&FrameMeta),
) -> io::Result<Segment> {
    let file_len = file.metadata()?.len();
    let mut segment = Segment {
        first_pos,
        path: path.to_path_buf(),
        file,
        len: file_len.max(SEGMENT_HEADER_LEN),
        last_pos: first_pos - 1,
        frames: 0,
        bytes: 0,
        index: Vec::new(),
        skips: Vec::new(),
    };
    if file_len < SEGMENT_HEADER_LEN {
        // Created but cut off before its header was complete.
        if truncate_tail {
            segment.file.set_len(0)?;
            segment.file.write_all_at(&frame::segment_header(), 0)?;
        }
        return Ok(segment);
    }
    let mut damage = Vec::new();
    let mut truncate_at = None;
    let mut after_damage = true;
    {
        let mut scanner = Scanner::new(&segment.file, SEGMENT_HEADER_LEN, file_len, &[]);
        while let Some(item) = scanner.next()? {
            match item {
                Item::Frame { meta, .. } => {
                    // A valid frame out of order cannot come from our writer: ignore it.
                    if meta.pos <= segment.last_pos || meta.pos < first_pos {
                        continue;
                    }
                    if after_damage || segment.frames.is_multiple_of(INDEX_EVERY) {
                        segment.index.push(IndexPoint {
                            pos: meta.pos,
                            offset: meta.offset,
                            frames_before: segment.frames,
                            bytes_before: segment.bytes,
                        });
                        after_damage = false;
                    }
                    on_frame(&meta);
                    segment.last_pos = meta.pos;
                    segment.frames += 1;
                    segment.bytes += meta.size();
                }
                Item::Damaged { start, end } => {
                    damage.push((start, end));
                    after_damage = true;
                }
                Item::Tail { start, end } => {
                    damage.push((start, end));
                    if truncate_tail {
                        truncate_at = Some(start);
                    }
                }
            }
        }
    }
    if !quarantine.read_only {
        for &(start, end) in &damage {
            save_damage(
                quarantine.dir,
                quarantine.lane,
                first_pos,
                &segment.file,
                start,
                end,
            )?;
        }
    }
    if let Some(at) = truncate_at {
        segment.file.set_len(at)?;
        segment.len = at;
        damage.pop();
    }
    segment.skips = damage;
    Ok(segment)
}

#[cfg(test)]
fn gaps(present: &[u64], from: u64, to: u64) -> Vec<(u64, u64)> {
    let mut tracker = GapTracker::new(from);
    for &p in present.iter().filter(|&&p| p <= to) {
        tracker.see(p);
    }
    tracker.finish(to)
}

impl LaneLog {
    /// Opens the lane in `dir`. `head` is what the snapshot says is gone; `watermark` the
    /// last position it says was committed. Returns the lane and the position ranges
    /// above the head that should be there but are not (damaged or lost on disk).
    ///
    /// `read_only` changes nothing on disk (for inspecting a store a running daemon
    /// owns): no torn tail is cut, nothing is quarantined, no segment is created.
    pub fn open(
        id: u8,
        name: &'static str,
        dir: &Path,
        quarantine_dir: &Path,
        position: LanePosition,
        segment_target: u64,
        read_only: bool,
    ) -> Result<(Self, Vec<(u64, u64)>), LaneError> {
        let LanePosition { head, watermark } = position;
        if !read_only {
            std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        }
        let mut firsts: Vec<u64> = match std::fs::read_dir(dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().to_string();
                    name.strip_suffix(".seg")?.parse::<u64>().ok()
                })
                .filter(|&f| f >= 1)
                .collect(),
            Err(e) if read_only && e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io_err(dir, e)),
        };
        firsts.sort_unstable();
        let mut segments = VecDeque::new();
        let mut tracker = GapTracker::new(head + 1);
        let mut max_seq = 0;
        for (i, &first) in firsts.iter().enumerate() {
            let path = dir.join(segment_name(first));
            let last = i + 1 == firsts.len();
            let file = OpenOptions::new()
                .read(true)
                .write(last && !read_only)
                .open(&path)
                .map_err(|e| io_err(&path, e))?;
            let segment = scan_segment(
                Arc::new(file),
                &path,
                first,
                last && !read_only,
                &Quarantine {
                    lane: name,
                    dir: quarantine_dir,
                    read_only,
                },
                &mut |meta| {
                    tracker.see(meta.pos);
                    max_seq = max_seq.max(meta.seq);
                },
            )
            .map_err(|e| io_err(&path, e))?;
            segments.push_back(segment);
        }
        let found_last = segments.iter().map(|s| s.last_pos).max().unwrap_or(0);
        let expected_last = found_last.max(watermark);
        let missing = tracker.finish(expected_last);
        let next_pos = expected_last
            .max(head)
            .max(segments.back().map_or(0, |s| s.first_pos - 1))
            + 1;
        let mut lane = LaneLog {
            id,
            name,
            dir: dir.to_path_buf(),
            quarantine_dir: quarantine_dir.to_path_buf(),
            segments,
            next_pos,
            published: next_pos - 1,
            head,
            head_loc: None,
            max_seq,
            segment_target,
            unsynced: Vec::new(),
            dir_unsynced: false,
            read_only,
        };
        // The segment being written must end at our next position: after a lost tail
        // new records go to a fresh segment, so the hole stays where it is.
        if !read_only
            && let Some(active) = lane.segments.back()
            && active.last_pos + 1 != next_pos
        {
            lane.roll().map_err(|e| io_err(dir, e))?;
        }
        lane.refresh_head().map_err(|e| io_err(dir, e))?;
        Ok((lane, missing))
    }

    fn seg_index(&self, first: u64) -> Option<usize> {
        self.segments
            .binary_search_by_key(&first, |s| s.first_pos)
            .ok()
    }

    /// Finds the first good frame with a position at or above `p`.
    fn locate(&self, p: u64) -> Result<Option<Loc>, NeedsRescan> {
        let Some(i) = self.segments.iter().position(|s| s.last_pos >= p) else {
            return Ok(None);
        };
        let seg = &self.segments[i];
        let k = seg.index.partition_point(|ip| ip.pos <= p);
        let start = if k == 0 {
            seg.index[0]
        } else {
            seg.index[k - 1]
        };
        let mut frames_before = start.frames_before;
        let mut bytes_before = start.bytes_before;
        let mut scanner = Scanner::new(&seg.file, start.offset, seg.len, &seg.skips);
        loop {
            match scanner.next() {
                Ok(Some(Item::Frame { meta, .. })) => {
                    if meta.pos >= p {
                        return Ok(Some(Loc {
                            seg_first: seg.first_pos,
                            offset: meta.offset,
                            frames_before,
                            bytes_before,
                        }));
                    }
                    frames_before += 1;
                    bytes_before += meta.size();
                }
                Ok(None) => return Ok(None),
                Ok(Some(_)) | Err(_) => return Err(NeedsRescan(seg.first_pos)),
            }
        }
    }

    /// Brings the cached location of the first live record up to date.
    fn refresh_head(&mut self) -> io::Result<()> {
        loop {
            match self.locate(self.head + 1) {
                Ok(loc) => {
                    self.head_loc = loc;
                    return Ok(());
                }
                Err(NeedsRescan(first)) => {
                    self.rescan(first)?;
                }
            }
        }
    }

    /// Scans a segment again after damage showed up at run time. Returns the ranges of
    /// live positions it no longer holds.
    pub fn rescan(&mut self, first: u64) -> io::Result<Vec<(u64, u64)>> {
        let Some(i) = self.seg_index(first) else {
            return Ok(Vec::new());
        };
        let path = self.segments[i].path.clone();
        let mut tracker = GapTracker::new(first.max(self.head + 1));
        // Never truncated at run time: the damage is stepped over, and the file handle
        // (writable for the segment being filled) is kept.
        let segment = scan_segment(
            self.segments[i].file.clone(),
            &path,
            first,
            false,
            &Quarantine {
                lane: self.name,
                dir: &self.quarantine_dir,
                read_only: self.read_only,
            },
            &mut |meta| tracker.see(meta.pos),
        )?;
        let through = match self.segments.get(i + 1) {
            Some(next) => next.first_pos - 1,
            None => self.next_pos - 1,
        };
        let missing = tracker.finish(through);
        self.segments[i] = segment;
        self.head_loc = None;
        match self.locate(self.head + 1) {
            Ok(loc) => self.head_loc = loc,
            Err(_) => self.head_loc = None,
        }
        Ok(missing)
    }

    /// Live records and their bytes.
    pub fn live(&self) -> (u64, u64) {
        let Some(loc) = self.head_loc else {
            return (0, 0);
        };
        let (mut frames, mut bytes) = (0, 0);
        for seg in self
            .segments
            .iter()
            .filter(|s| s.first_pos >= loc.seg_first)
        {
            frames += seg.frames;
            bytes += seg.bytes;
        }
        (frames - loc.frames_before, bytes - loc.bytes_before)
    }

    /// Bytes of every segment file of the lane.
    pub fn disk_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.len).sum()
    }

    fn roll(&mut self) -> io::Result<()> {
        if let Some(active) = self.segments.back() {
            self.unsynced.push(active.file.clone());
        }
        let first = self.next_pos;
        let path = self.dir.join(segment_name(first));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        file.write_all_at(&frame::segment_header(), 0)?;
        let file = Arc::new(file);
        self.unsynced.push(file.clone());
        self.dir_unsynced = true;
        self.segments.push_back(Segment {
            first_pos: first,
            path,
            file,
            len: SEGMENT_HEADER_LEN,
            last_pos: first - 1,
            frames: 0,
            bytes: 0,
            index: Vec::new(),
            skips: Vec::new(),
        });
        Ok(())
    }

    /// Encodes records for the end of the lane into `buf` (rolling to a new segment
    /// first when the current one is full). Nothing is written yet.
    pub fn prepare<'a>(
        &mut self,
        buf: &mut Vec<u8>,
        records: impl Iterator<Item = (u64, u64, &'a Sample)>,
    ) -> io::Result<Prepared> {
        let needs_roll = match self.segments.back() {
            None => true,
            Some(active) => active.len >= self.segment_target,
        };
        if needs_roll {
            self.roll()?;
        }
        let active = self.segments.back().expect("an active segment");
        buf.clear();
        let mut points = Vec::new();
        let (mut pos, mut frames, mut bytes) = (self.next_pos, active.frames, active.bytes);
        for (seq, stamp, sample) in records {
            if frames.is_multiple_of(INDEX_EVERY) || active.index.is_empty() && points.is_empty() {
                points.push(IndexPoint {
                    pos,
                    offset: active.len + buf.len() as u64,
                    frames_before: frames,
                    bytes_before: bytes,
                });
            }
            bytes += frame::encode_into(buf, pos, seq, stamp, sample);
            pos += 1;
            frames += 1;
        }
        Ok(Prepared {
            points,
            frames,
            bytes,
            next_pos: pos,
            size: buf.len() as u64,
        })
    }

    /// Writes what `prepare` encoded (not yet flushed, not yet visible to readers). On
    /// error nothing is appended.
    pub fn write(&mut self, buf: &[u8], prepared: Prepared) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let active = self.segments.back_mut().expect("an active segment");
        if let Err(e) = active.file.write_all_at(buf, active.len) {
            // Leave no half frame behind (disk full): the next append starts clean.
            let _ = active.file.set_len(active.len);
            return Err(e);
        }
        active.len += buf.len() as u64;
        active.index.extend(prepared.points);
        active.frames = prepared.frames;
        active.bytes = prepared.bytes;
        active.last_pos = prepared.next_pos - 1;
        self.next_pos = prepared.next_pos;
        if !self.unsynced.iter().any(|f| Arc::ptr_eq(f, &active.file)) {
            self.unsynced.push(active.file.clone());
        }
        if self.head_loc.is_none() {
            self.refresh_head()?;
        }
        Ok(())
    }

    /// What must be synced for the appended records to be durable: files, and whether
    /// the directory (new segments) is among them. Taken, so the caller syncs outside
    /// the store lock.
    pub fn take_unsynced(&mut self) -> (Vec<Arc<File>>, Option<PathBuf>) {
        let files = std::mem::take(&mut self.unsynced);
        let dir = std::mem::take(&mut self.dir_unsynced).then(|| self.dir.clone());
        (files, dir)
    }

    /// Gives back what could not be synced, for the next attempt.
    pub fn return_unsynced(&mut self, files: Vec<Arc<File>>, dir: bool) {
        self.unsynced.extend(files);
        self.dir_unsynced |= dir;
    }

    /// Moves the head forward (never back).
    pub fn advance_head(&mut self, to: u64) -> io::Result<()> {
        if to <= self.head {
            return Ok(());
        }
        self.head = to.min(self.next_pos - 1);
        self.refresh_head()
    }

    /// Walks live records from the head while `take` says so. Returns how many it took,
    /// their bytes, and the last position taken.
    pub fn walk_head(
        &mut self,
        mut take: impl FnMut(&FrameMeta, u64, u64) -> bool,
    ) -> io::Result<(u64, u64, u64)> {
        loop {
            match self.try_walk_head(&mut take) {
                Ok(r) => return Ok(r),
                Err(NeedsRescan(first)) => {
                    self.rescan(first)?;
                }
            }
        }
    }

    /// Calls `visit` for every good frame from `loc` on, across segments, until it
    /// returns false. Damage not yet known asks for a rescan.
    fn each_frame_from(
        &self,
        loc: Loc,
        mut visit: impl FnMut(FrameMeta, &[u8]) -> bool,
    ) -> Result<(), NeedsRescan> {
        let start = self.seg_index(loc.seg_first).unwrap_or(0);
        for (i, seg) in self.segments.iter().enumerate().skip(start) {
            let from = if i == start {
                loc.offset
            } else {
                SEGMENT_HEADER_LEN
            };
            let mut scanner = Scanner::new(&seg.file, from, seg.len, &seg.skips);
            loop {
                match scanner.next() {
                    Ok(Some(Item::Frame { meta, body })) => {
                        if !visit(meta, body) {
                            return Ok(());
                        }
                    }
                    Ok(None) => break,
                    Ok(Some(_)) | Err(_) => return Err(NeedsRescan(seg.first_pos)),
                }
            }
        }
        Ok(())
    }

    fn try_walk_head(
        &self,
        take: &mut impl FnMut(&FrameMeta, u64, u64) -> bool,
    ) -> Result<(u64, u64, u64), NeedsRescan> {
        let (mut count, mut bytes, mut last) = (0, 0, self.head);
        let Some(loc) = self.head_loc else {
            return Ok((0, 0, self.head));
        };
        self.each_frame_from(loc, |meta, _| {
            if !take(&meta, count, bytes) {
                return false;
            }
            count += 1;
            bytes += meta.size();
            last = meta.pos;
            true
        })?;
        Ok((count, bytes, last))
    }

    /// Up to `max` records from position `from` on, no further than what is published.
    pub fn read(&self, from: u64, max: usize) -> Result<Vec<RawRecord>, NeedsRescan> {
        let mut out = Vec::new();
        if max == 0 || from > self.published {
            return Ok(out);
        }
        let Some(loc) = self.locate(from.max(self.head + 1))? else {
            return Ok(out);
        };
        self.each_frame_from(loc, |meta, body| {
            if meta.pos > self.published {
                return false;
            }
            out.push(RawRecord {
                meta,
                body: body.to_vec(),
            });
            out.len() < max
        })?;
        Ok(out)
    }

    /// Deletes the segment files whose records are all at or below `durable_head` (the
    /// head as the last durable snapshot has it), except the one being written.
    pub fn delete_dead_segments(&mut self, durable_head: u64) -> io::Result<u64> {
        let mut deleted = 0;
        while self.segments.len() > 1 {
            let seg = &self.segments[0];
            if seg.last_pos > durable_head.min(self.head) {
                break;
            }
            std::fs::remove_file(&seg.path)?;
            self.segments.pop_front();
            deleted += 1;
        }
        Ok(deleted)
    }

    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::Value;

    fn sample(i: u64) -> Sample {
        let mut s = Sample::new("s", "d", i as i64);
        s.fields.insert("i".into(), Value::Int(i as i64));
        s
    }

    fn at(head: u64, watermark: u64) -> LanePosition {
        LanePosition { head, watermark }
    }

    fn fill(lane: &mut LaneLog, n: u64) {
        let mut buf = Vec::new();
        let samples: Vec<Sample> = (0..n).map(|i| sample(lane.next_pos + i)).collect();
        let start = lane.next_pos;
        let prepared = lane
            .prepare(
                &mut buf,
                samples
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (start + i as u64, 0, s)),
            )
            .unwrap();
        lane.write(&buf, prepared).unwrap();
        lane.published = lane.next_pos - 1;
    }

    #[test]
    fn gaps_are_exact() {
        assert_eq!(
            gaps(&[1, 2, 5, 6, 9], 1, 10),
            vec![(3, 4), (7, 8), (10, 10)]
        );
        assert_eq!(gaps(&[], 3, 2), vec![]);
        assert_eq!(gaps(&[4, 5], 1, 5), vec![(1, 3)]);
    }

    #[test]
    fn rolls_reads_across_segments_and_deletes_whole_ones() {
        let dir = tempfile::tempdir().unwrap();
        let q = dir.path().join("q");
        let (mut lane, missing) = LaneLog::open(
            0,
            "main",
            &dir.path().join("main"),
            &q,
            at(0, 0),
            4096,
            false,
        )
        .unwrap();
        assert!(missing.is_empty());
        for _ in 0..20 {
            fill(&mut lane, 30);
        }
        assert!(lane.segment_count() > 3, "{}", lane.segment_count());
        assert_eq!(lane.live().0, 600);
        let got: Vec<u64> = lane
            .read(250, 100)
            .unwrap()
            .iter()
            .map(|r| r.meta.pos)
            .collect();
        assert_eq!(got, (250..350).collect::<Vec<_>>());
        lane.advance_head(400).unwrap();
        assert_eq!(lane.live().0, 200);
        let before = lane.segment_count();
        assert!(lane.delete_dead_segments(400).unwrap() > 0);
        assert!(lane.segment_count() < before);
        assert_eq!(lane.read(1, 1).unwrap()[0].meta.pos, 401);
        drop(lane);
        let (lane, missing) = LaneLog::open(
            0,
            "main",
            &dir.path().join("main"),
            &q,
            at(400, 600),
            4096,
            false,
        )
        .unwrap();
        assert!(missing.is_empty(), "{missing:?}");
        assert_eq!(lane.live().0, 200);
        assert_eq!(lane.next_pos, 601);
    }

    #[test]
    fn damage_costs_only_the_records_in_it_and_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        let lane_dir = dir.path().join("main");
        let q = dir.path().join("q");
        let (mut lane, _) =
            LaneLog::open(0, "main", &lane_dir, &q, at(0, 0), 1 << 20, false).unwrap();
        fill(&mut lane, 100);
        drop(lane);
        let path = lane_dir.join(segment_name(1));
        let mut bytes = std::fs::read(&path).unwrap();
        // Damage the middle of the file: a few records' worth.
        let mid = bytes.len() / 2;
        for b in &mut bytes[mid..mid + 100] {
            *b ^= 0x55;
        }
        std::fs::write(&path, bytes).unwrap();
        let (lane, missing) =
            LaneLog::open(0, "main", &lane_dir, &q, at(0, 100), 1 << 20, false).unwrap();
        let lost: u64 = missing.iter().map(|(a, b)| b - a + 1).sum();
        assert!((1..=4).contains(&lost), "{missing:?}");
        assert_eq!(lane.live().0 + lost, 100);
        assert_eq!(lane.read(1, 1000).unwrap().len() as u64, 100 - lost);
        assert_eq!(std::fs::read_dir(&q).unwrap().count(), 1);
    }
}
