//! Model-based property test of the store: random sequences of appends to both lanes,
//! reads, acknowledgements, dead letters, requeues, flushes, checkpoints, reopens and
//! simulated crashes (a torn write at the end of a segment; a power cut that loses the
//! cursor state written since the last checkpoint) against the real store on disk and a
//! plain in-memory model, compared after every step. The SIGKILL of the real process is
//! in `tests/crash.rs`.

use std::collections::BTreeMap;
use std::path::Path;

use proptest::prelude::*;
use tidegate::config::FullPolicy;
use tidegate::sample::{Record, RecordForm, Sample, Value};
use tidegate::store::{Batch, Lane, LogStore, Store, StoreOptions, frame};

const UPLINKS: [&str; 2] = ["a", "b"];

#[derive(Debug, Clone)]
enum Op {
    /// Count, which of them go to the priority lane (bit mask), durable.
    Append(u8, u16, bool),
    Read(usize, u8),
    Ack(usize, u8),
    DeadLetter(usize, u8),
    Requeue,
    Flush,
    Checkpoint,
    Reopen,
    TornWrite(usize, u8),
    PowerCut,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (1u8..12, any::<u16>(), any::<bool>()).prop_map(|(n, p, d)| Op::Append(n, p & 0x0421, d)),
        3 => (0usize..2, 1u8..20).prop_map(|(u, n)| Op::Read(u, n)),
        4 => (0usize..2, 1u8..15).prop_map(|(u, n)| Op::Ack(u, n)),
        1 => (0usize..2, 1u8..5).prop_map(|(u, n)| Op::DeadLetter(u, n)),
        1 => Just(Op::Requeue),
        1 => Just(Op::Flush),
        2 => Just(Op::Checkpoint),
        1 => Just(Op::Reopen),
        1 => (0usize..2, 1u8..60).prop_map(|(l, n)| Op::TornWrite(l, n)),
        1 => Just(Op::PowerCut),
    ]
}

fn sample(id: u64) -> Sample {
    let mut s = Sample::new("model", format!("dev-{}", id % 3), id as i64);
    s.fields.insert("id".into(), Value::Int(id as i64));
    // Vary the size so that eviction by bytes is exercised.
    s.fields.insert(
        "pad".into(),
        Value::Text("x".repeat((id % 7) as usize * 10)),
    );
    s
}

#[derive(Clone)]
struct Rec {
    pos: u64,
    seq: u64,
    size: u64,
    sample: Sample,
}

/// What survives a power cut: the state of the last checkpoint.
#[derive(Clone, Default)]
struct Durable {
    cursors: [[u64; 2]; 2],
    dropped: [u64; 2],
    evicted: u64,
}

#[derive(Default)]
struct Model {
    lanes: [Vec<Rec>; 2],
    next_pos: [u64; 2],
    published: [u64; 2],
    next_seq: u64,
    cursors: [[u64; 2]; 2],
    dropped: [u64; 2],
    max_bytes: u64,
    evicted: u64,
    dead: Vec<(usize, Record)>,
    requeued: [BTreeMap<u64, Record>; 2],
    durable: Durable,
}

impl Model {
    fn head(&self, l: usize) -> u64 {
        self.dropped[l].max(self.cursors.iter().map(|c| c[l]).min().unwrap())
    }

    fn live(&self, l: usize) -> impl Iterator<Item = &Rec> {
        let head = self.head(l);
        self.lanes[l].iter().filter(move |r| r.pos > head)
    }

    fn bytes(&self) -> u64 {
        (0..2)
            .map(|l| self.live(l).map(|r| r.size).sum::<u64>())
            .sum()
    }

    fn records(&self) -> u64 {
        (0..2).map(|l| self.live(l).count() as u64).sum()
    }

    fn visible(&self, u: usize, l: usize) -> Vec<&Rec> {
        let from = self.cursors[u][l].max(self.head(l));
        self.live(l)
            .filter(|r| r.pos > from && r.pos <= self.published[l])
            .collect()
    }

    fn pending(&self, u: usize) -> u64 {
        self.requeued[u].len() as u64 + (0..2).map(|l| self.visible(u, l).len() as u64).sum::<u64>()
    }

    /// What `read` must return.
    fn read(&self, u: usize, max: usize) -> Option<Batch> {
        let requeued: Vec<Record> = self.requeued[u].values().take(max).cloned().collect();
        if let Some(last) = requeued.last() {
            return Some(Batch {
                lane: Lane::Requeued,
                through: last.seq,
                records: requeued,
            });
        }
        for (l, lane) in [(1, Lane::Priority), (0, Lane::Main)] {
            let recs: Vec<&Rec> = self.visible(u, l).into_iter().take(max).collect();
            if let Some(last) = recs.last() {
                return Some(Batch {
                    lane,
                    through: last.pos,
                    records: recs
                        .iter()
                        .map(|r| Record::new(r.seq, r.sample.clone()))
                        .collect(),
                });
            }
        }
        None
    }

    fn ack(&mut self, u: usize, batch: &Batch) {
        match batch.lane {
            Lane::Requeued => self.requeued[u].retain(|seq, _| *seq > batch.through),
            lane => {
                let l = lane as usize;
                self.cursors[u][l] = self.cursors[u][l].max(batch.through);
            }
        }
    }

    fn append(&mut self, samples: Vec<(Lane, Sample)>, durable: bool) -> u64 {
        let incoming: u64 = samples.iter().map(|(_, s)| frame::encoded_len(s)).sum();
        let used = self.bytes();
        let mut evicted = 0;
        if used > 0 && used + incoming > self.max_bytes {
            let needed = used + incoming - self.max_bytes;
            let mut freed = 0;
            for l in 0..2 {
                let mut through = None;
                for r in self.live(l) {
                    if freed >= needed {
                        break;
                    }
                    freed += r.size;
                    evicted += 1;
                    through = Some(r.pos);
                }
                if let Some(t) = through {
                    self.dropped[l] = t;
                }
            }
        }
        self.evicted += evicted;
        for (lane, sample) in samples {
            let l = lane as usize;
            self.lanes[l].push(Rec {
                pos: self.next_pos[l],
                seq: self.next_seq,
                size: frame::encoded_len(&sample),
                sample,
            });
            self.next_pos[l] += 1;
            self.next_seq += 1;
        }
        if durable {
            self.publish();
        }
        evicted
    }

    fn publish(&mut self) {
        self.published = [self.next_pos[0] - 1, self.next_pos[1] - 1];
    }

    fn checkpoint(&mut self) {
        self.publish();
        self.durable = Durable {
            cursors: self.cursors,
            dropped: self.dropped,
            evicted: self.evicted,
        };
    }
}

fn open(dir: &Path, max_bytes: u64) -> LogStore {
    let names: Vec<String> = UPLINKS.iter().map(|s| s.to_string()).collect();
    let mut options = StoreOptions::new(max_bytes, FullPolicy::DropOldest);
    // Small segments, so that rolling, deleting and reading across files are exercised.
    options.segment_bytes = Some(1500);
    LogStore::open(dir, &names, options).unwrap()
}

fn newest_segment(dir: &Path, lane: usize) -> Option<std::path::PathBuf> {
    let lane_dir = dir.join("log").join(["main", "priority"][lane]);
    let mut files: Vec<_> = std::fs::read_dir(lane_dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    files.pop()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn the_store_behaves_like_its_model(ops in prop::collection::vec(op(), 1..40), small in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        let max_bytes = if small { 2_000 } else { 1 << 30 };
        let mut store = Some(open(dir.path(), max_bytes));
        let mut model = Model { next_pos: [1, 1], next_seq: 1, max_bytes, ..Model::default() };
        let mut id = 0u64;
        for op in ops {
            let s = store.as_ref().unwrap();
            match op {
                Op::Append(n, priority_mask, durable) => {
                    let batch: Vec<(Lane, Sample)> = (0..n).map(|i| {
                        id += 1;
                        let lane = if priority_mask & (1 << i) != 0 { Lane::Priority } else { Lane::Main };
                        (lane, sample(id))
                    }).collect();
                    let appended = s.append(&batch, durable).unwrap();
                    prop_assert_eq!(appended.first_seq, model.next_seq);
                    prop_assert_eq!(appended.last_seq, model.next_seq + u64::from(n) - 1);
                    let evicted = model.append(batch, durable);
                    prop_assert_eq!(appended.evicted, evicted);
                }
                Op::Read(u, max) => {
                    let got = s.read(UPLINKS[u], usize::from(max)).unwrap();
                    prop_assert_eq!(got, model.read(u, usize::from(max)));
                }
                // Acknowledged and dead-lettered batches are read as the HTTP and file
                // uplinks read them, as stored JSON: they must equal the decoded ones.
                Op::Ack(u, max) => {
                    let got = s.read_as(UPLINKS[u], usize::from(max), RecordForm::Json).unwrap();
                    prop_assert_eq!(&got, &model.read(u, usize::from(max)));
                    if let Some(batch) = got {
                        s.ack(UPLINKS[u], batch.lane, batch.through).unwrap();
                        model.ack(u, &batch);
                    }
                }
                Op::DeadLetter(u, max) => {
                    let got = s.read_as(UPLINKS[u], usize::from(max), RecordForm::Json).unwrap();
                    prop_assert_eq!(&got, &model.read(u, usize::from(max)));
                    if let Some(batch) = got {
                        s.dead_letter(UPLINKS[u], &batch, "test").unwrap();
                        for r in &batch.records {
                            model.dead.retain(|(du, dr)| !(*du == u && dr.seq == r.seq));
                            model.dead.push((u, r.clone()));
                        }
                        model.ack(u, &batch);
                    }
                }
                Op::Requeue => {
                    let moved = store.as_ref().unwrap().dead_letters().requeue(None).unwrap();
                    prop_assert_eq!(moved, model.dead.len() as u64);
                    for (u, r) in model.dead.drain(..) {
                        model.requeued[u].insert(r.seq, r);
                    }
                }
                Op::Flush => {
                    s.flush().unwrap();
                    model.publish();
                }
                Op::Checkpoint => {
                    s.checkpoint().unwrap();
                    model.checkpoint();
                }
                Op::Reopen => {
                    drop(store.take());
                    store = Some(open(dir.path(), max_bytes));
                    // Opening writes a durable snapshot of what it found.
                    model.checkpoint();
                }
                Op::TornWrite(l, n) => {
                    // A crash in the middle of a write: part of a frame at the end.
                    drop(store.take());
                    if let Some(path) = newest_segment(dir.path(), l) {
                        let mut bytes = std::fs::read(&path).unwrap();
                        bytes.extend_from_slice(b"TGR1");
                        bytes.extend(std::iter::repeat_n(0xa5u8, usize::from(n)));
                        std::fs::write(&path, bytes).unwrap();
                    }
                    store = Some(open(dir.path(), max_bytes));
                    // Opening writes a durable snapshot of what it found.
                    model.checkpoint();
                }
                Op::PowerCut => {
                    // The cursor state written since the last checkpoint is lost; the
                    // records (fsynced, or still in the page cache here) are not.
                    drop(store.take());
                    let _ = std::fs::remove_file(dir.path().join("state.v"));
                    store = Some(open(dir.path(), max_bytes));
                    model.cursors = model.durable.cursors;
                    model.dropped = model.durable.dropped;
                    model.evicted = model.durable.evicted;
                    model.checkpoint();
                }
            }
            let s = store.as_ref().unwrap();
            let stats = s.stats().unwrap();
            prop_assert_eq!(stats.records, model.records());
            prop_assert_eq!(stats.bytes, model.bytes());
            prop_assert_eq!(stats.dead_letters, model.dead.len() as u64);
            prop_assert_eq!(stats.evicted_total, model.evicted);
            prop_assert_eq!(stats.lost_on_disk, 0, "a torn tail past the last commit loses nothing");
            for (u, name) in UPLINKS.iter().enumerate() {
                prop_assert_eq!(s.pending(name).unwrap(), model.pending(u), "pending of {}", name);
            }
        }
    }
}
