//! The on-disk record format, and the scanner that reads it back — including past damage.
//!
//! A segment file is a 16-byte header followed by frames:
//!
//! ```text
//! segment header   b"TIDEGATE" | format version u32 (1) | reserved u32
//! frame            magic b"TGR1" | body length u32 | CRC32 u32 | pos u64 | seq u64 | stamp u64 | body
//! ```
//!
//! All integers are big-endian. `pos` is the record's place in its lane (dense: 1, 2, 3…),
//! so a gap in positions is exactly the number of records lost to damage; `seq` is the
//! gateway-wide sequence number the backend sees; `stamp` is the store clock at commit
//! (monotonic, used for `max_age`, never the wall clock). The CRC covers the length and
//! everything after the CRC field, so any damaged byte makes its frame invalid.
//!
//! The scanner walks frames and, on a frame that does not validate, searches forward for
//! the next one that does: a damaged region costs only the records inside it.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use crate::sample::Sample;

pub const SEGMENT_MAGIC: &[u8; 8] = b"TIDEGATE";
pub const SEGMENT_VERSION: u32 = 1;
pub const SEGMENT_HEADER_LEN: u64 = 16;
pub const FRAME_MAGIC: &[u8; 4] = b"TGR1";
pub const FRAME_HEADER_LEN: usize = 36;
/// Larger bodies are taken for damage: no sample comes near this.
pub const MAX_BODY: usize = 16 << 20;

/// How much the scanner reads at a time.
const CHUNK: usize = 256 << 10;

pub fn segment_header() -> [u8; SEGMENT_HEADER_LEN as usize] {
    let mut h = [0u8; SEGMENT_HEADER_LEN as usize];
    h[..8].copy_from_slice(SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&SEGMENT_VERSION.to_be_bytes());
    h
}

/// What a frame's header says about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameMeta {
    /// File offset of the frame's first byte.
    pub offset: u64,
    pub pos: u64,
    pub seq: u64,
    pub stamp: u64,
    pub body_len: u32,
}

impl FrameMeta {
    pub fn size(&self) -> u64 {
        FRAME_HEADER_LEN as u64 + u64::from(self.body_len)
    }
    pub fn end(&self) -> u64 {
        self.offset + self.size()
    }
}

/// The bytes a sample takes on disk (its whole frame): what `max_bytes` counts.
pub fn encoded_len(sample: &Sample) -> u64 {
    let body = serde_json::to_vec(sample).expect("a sample always serialises to JSON");
    FRAME_HEADER_LEN as u64 + body.len() as u64
}

/// Appends one frame to `out`; returns its size.
pub fn encode_into(out: &mut Vec<u8>, pos: u64, seq: u64, stamp: u64, sample: &Sample) -> u64 {
    let start = out.len();
    out.extend_from_slice(FRAME_MAGIC);
    out.extend_from_slice(&[0u8; 8]);
    out.extend_from_slice(&pos.to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&stamp.to_be_bytes());
    serde_json::to_writer(&mut *out, sample).expect("a sample always serialises to JSON");
    let body_len = (out.len() - start - FRAME_HEADER_LEN) as u32;
    out[start + 4..start + 8].copy_from_slice(&body_len.to_be_bytes());
    let crc = frame_crc(&out[start..]);
    out[start + 8..start + 12].copy_from_slice(&crc.to_be_bytes());
    (out.len() - start) as u64
}

fn frame_crc(frame: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&frame[4..8]);
    h.update(&frame[12..]);
    h.finalize()
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// Reads a header that has the right magic and a plausible length; the CRC is not
/// checked here.
fn parse_header(offset: u64, b: &[u8]) -> Option<FrameMeta> {
    if b.len() < FRAME_HEADER_LEN || &b[..4] != FRAME_MAGIC {
        return None;
    }
    let body_len = be_u32(&b[4..8]);
    if body_len as usize > MAX_BODY {
        return None;
    }
    Some(FrameMeta {
        offset,
        pos: be_u64(&b[12..20]),
        seq: be_u64(&b[20..28]),
        stamp: be_u64(&b[28..36]),
        body_len,
    })
}

/// Decodes a frame body.
pub fn decode_body(body: &[u8]) -> Result<Sample, String> {
    serde_json::from_slice(body).map_err(|e| e.to_string())
}

/// What the scanner found next.
#[derive(Debug)]
pub enum Item<'a> {
    Frame {
        meta: FrameMeta,
        body: &'a [u8],
    },
    /// Bytes `start..end` hold no valid frame, and a valid frame starts at `end`.
    Damaged {
        start: u64,
        end: u64,
    },
    /// Bytes `start..end` (the end of the range scanned) hold no valid frame: a write
    /// cut short by a crash, or damage at the very end.
    Tail {
        start: u64,
        end: u64,
    },
}

/// Walks the frames of one segment file between two offsets, reading in chunks.
pub struct Scanner<'f> {
    file: &'f File,
    end: u64,
    at: u64,
    buf: Vec<u8>,
    buf_off: u64,
    /// Known damaged ranges to step over silently (sorted by start).
    skips: &'f [(u64, u64)],
}

impl<'f> Scanner<'f> {
    pub fn new(file: &'f File, from: u64, end: u64, skips: &'f [(u64, u64)]) -> Self {
        Scanner {
            file,
            end,
            at: from,
            buf: Vec::new(),
            buf_off: from,
            skips,
        }
    }

    /// The offset the next item starts at.
    pub fn offset(&self) -> u64 {
        self.at
    }

    /// Makes `buf` cover `from..to` (clamped to the end). Returns the bytes available.
    fn load(&mut self, from: u64, to: u64) -> io::Result<usize> {
        let to = to.min(self.end);
        if from >= to {
            return Ok(0);
        }
        let have_end = self.buf_off + self.buf.len() as u64;
        if from >= self.buf_off && to <= have_end {
            return Ok((to - from) as usize);
        }
        let want = ((to - from) as usize)
            .max(CHUNK)
            .min((self.end - from) as usize);
        self.buf.resize(want, 0);
        let mut filled = 0;
        while filled < want {
            let n = self
                .file
                .read_at(&mut self.buf[filled..], from + filled as u64)?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        self.buf.truncate(filled);
        self.buf_off = from;
        Ok(((to - from) as usize).min(filled))
    }

    fn slice(&self, from: u64, len: usize) -> &[u8] {
        let start = (from - self.buf_off) as usize;
        &self.buf[start..start + len]
    }

    /// A complete, valid frame at `offset`?
    fn valid_at(&mut self, offset: u64) -> io::Result<Option<FrameMeta>> {
        let n = self.load(offset, offset + FRAME_HEADER_LEN as u64)?;
        if n < FRAME_HEADER_LEN {
            return Ok(None);
        }
        let Some(meta) = parse_header(offset, self.slice(offset, FRAME_HEADER_LEN)) else {
            return Ok(None);
        };
        if meta.end() > self.end {
            return Ok(None);
        }
        let size = meta.size() as usize;
        if self.load(offset, meta.end())? < size {
            return Ok(None);
        }
        let frame = self.slice(offset, size);
        if be_u32(&frame[8..12]) != frame_crc(frame) {
            return Ok(None);
        }
        Ok(Some(meta))
    }

    /// The next offset after `from` where a valid frame starts.
    fn resync(&mut self, from: u64) -> io::Result<Option<FrameMeta>> {
        let mut at = from;
        while at + FRAME_HEADER_LEN as u64 <= self.end {
            let n = self.load(at, at + CHUNK as u64)?;
            if n < 4 {
                return Ok(None);
            }
            let window = self.slice(at, n);
            let Some(i) = window.windows(4).position(|w| w == FRAME_MAGIC) else {
                // The magic may straddle the chunk boundary.
                at += (n - 3) as u64;
                continue;
            };
            let candidate = at + i as u64;
            if let Some(meta) = self.valid_at(candidate)? {
                return Ok(Some(meta));
            }
            at = candidate + 1;
        }
        Ok(None)
    }

    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> io::Result<Option<Item<'_>>> {
        if let Some(&(_, skip_end)) = self
            .skips
            .iter()
            .find(|(s, e)| *s <= self.at && self.at < *e)
        {
            self.at = skip_end;
        }
        if self.at >= self.end {
            return Ok(None);
        }
        let at = self.at;
        if let Some(meta) = self.valid_at(at)? {
            self.at = meta.end();
            let body = self.slice(at + FRAME_HEADER_LEN as u64, meta.body_len as usize);
            return Ok(Some(Item::Frame { meta, body }));
        }
        match self.resync(at + 1)? {
            Some(next) => {
                self.at = next.offset;
                Ok(Some(Item::Damaged {
                    start: at,
                    end: next.offset,
                }))
            }
            None => {
                self.at = self.end;
                Ok(Some(Item::Tail {
                    start: at,
                    end: self.end,
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::Value;
    use std::io::Write;

    fn sample(i: i64) -> Sample {
        let mut s = Sample::new("src", "dev", i);
        s.fields.insert("x".into(), Value::Int(i));
        s.fields
            .insert("pad".into(), Value::Text("y".repeat((i % 5) as usize * 7)));
        s
    }

    fn file_with(frames: usize) -> (tempfile::NamedTempFile, Vec<u8>, Vec<u64>) {
        let mut bytes = segment_header().to_vec();
        let mut offsets = Vec::new();
        for i in 0..frames {
            offsets.push(bytes.len() as u64);
            encode_into(
                &mut bytes,
                i as u64 + 1,
                100 + i as u64,
                7,
                &sample(i as i64),
            );
        }
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&bytes).unwrap();
        (f, bytes, offsets)
    }

    type Range = (u64, u64);

    /// Positions of the valid frames, damaged ranges, and the tail.
    fn scan(file: &File, len: u64) -> (Vec<u64>, Vec<Range>, Option<Range>) {
        let mut s = Scanner::new(file, SEGMENT_HEADER_LEN, len, &[]);
        let (mut pos, mut damaged, mut tail) = (Vec::new(), Vec::new(), None);
        while let Some(item) = s.next().unwrap() {
            match item {
                Item::Frame { meta, body } => {
                    assert_eq!(decode_body(body).unwrap().ts, meta.pos as i64 - 1);
                    pos.push(meta.pos)
                }
                Item::Damaged { start, end } => damaged.push((start, end)),
                Item::Tail { start, end } => tail = Some((start, end)),
            }
        }
        (pos, damaged, tail)
    }

    #[test]
    fn frames_round_trip() {
        let (f, bytes, _) = file_with(50);
        let (pos, damaged, tail) = scan(f.as_file(), bytes.len() as u64);
        assert_eq!(pos, (1..=50).collect::<Vec<_>>());
        assert!(damaged.is_empty() && tail.is_none());
    }

    #[test]
    fn a_flipped_byte_costs_only_its_own_frame() {
        let (_, bytes, offsets) = file_with(30);
        for (k, &victim) in offsets.iter().enumerate().take(29) {
            for within in [0u64, 5, 9, 13, 30, 40] {
                let mut bad = bytes.clone();
                let i = (victim + within) as usize;
                if i >= offsets[k + 1] as usize {
                    continue;
                }
                bad[i] ^= 0x20;
                let mut f = tempfile::NamedTempFile::new().unwrap();
                f.write_all(&bad).unwrap();
                let (pos, damaged, tail) = scan(f.as_file(), bad.len() as u64);
                let want: Vec<u64> = (1..=30).filter(|p| *p != k as u64 + 1).collect();
                assert_eq!(pos, want, "flip in frame {k} at +{within}");
                assert_eq!(damaged, vec![(victim, offsets[k + 1])]);
                assert!(tail.is_none());
            }
        }
    }

    #[test]
    fn a_torn_last_frame_is_a_tail() {
        let (_, bytes, offsets) = file_with(10);
        let cut = offsets[9] + 20;
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&bytes[..cut as usize]).unwrap();
        let (pos, damaged, tail) = scan(f.as_file(), cut);
        assert_eq!(pos, (1..=9).collect::<Vec<_>>());
        assert!(damaged.is_empty());
        assert_eq!(tail, Some((offsets[9], cut)));
    }

    #[test]
    fn known_damage_is_stepped_over_silently() {
        let (_, mut bytes, offsets) = file_with(5);
        bytes[offsets[2] as usize + 1] ^= 1;
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&bytes).unwrap();
        let skips = [(offsets[2], offsets[3])];
        let mut s = Scanner::new(f.as_file(), SEGMENT_HEADER_LEN, bytes.len() as u64, &skips);
        let mut pos = Vec::new();
        while let Some(item) = s.next().unwrap() {
            match item {
                Item::Frame { meta, .. } => pos.push(meta.pos),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(pos, vec![1, 2, 4, 5]);
    }

    #[test]
    fn garbage_never_panics_the_scanner() {
        let mut rng = fastrand::Rng::with_seed(3);
        let (_, bytes, _) = file_with(20);
        for _ in 0..200 {
            let mut bad = bytes.clone();
            for _ in 0..rng.usize(1..40) {
                let i = rng.usize(0..bad.len());
                bad[i] = rng.u8(..);
            }
            bad.truncate(rng.usize(SEGMENT_HEADER_LEN as usize..=bad.len()));
            let mut f = tempfile::NamedTempFile::new().unwrap();
            f.write_all(&bad).unwrap();
            let (pos, _, _) = scan(f.as_file(), bad.len() as u64);
            assert!(pos.windows(2).all(|w| w[0] < w[1]));
        }
    }
}
