//! Model-based property test of the store: random sequences of append / read / ack /
//! dead-letter / reopen against the sled store and against a plain in-memory model,
//! compared after every step. The crash case proper (SIGKILL of the real process) is in
//! `tests/crash.rs`.

use std::collections::BTreeMap;

use proptest::prelude::*;
use tidegate::config::FullPolicy;
use tidegate::sample::{Sample, Value};
use tidegate::store::{SledStore, Store, codec};

const UPLINKS: [&str; 2] = ["a", "b"];

#[derive(Debug, Clone)]
enum Op {
    Append(u8),
    Read(usize, u8),
    Ack(usize, u8),
    DeadLetter(usize, u8),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u8..12).prop_map(Op::Append),
        3 => (0usize..2, 1u8..20).prop_map(|(u, n)| Op::Read(u, n)),
        3 => (0usize..2, 0u8..15).prop_map(|(u, n)| Op::Ack(u, n)),
        1 => (0usize..2, 1u8..5).prop_map(|(u, n)| Op::DeadLetter(u, n)),
        1 => Just(Op::Reopen),
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

fn size(s: &Sample) -> u64 {
    codec::encode(s).len() as u64 + 8
}

#[derive(Default)]
struct Model {
    records: BTreeMap<u64, Sample>,
    next_seq: u64,
    cursors: [u64; 2],
    bytes: u64,
    max_bytes: u64,
    evicted: u64,
    dead: u64,
}

impl Model {
    fn pending(&self, u: usize) -> Vec<(u64, &Sample)> {
        self.records
            .range(self.cursors[u] + 1..)
            .map(|(k, v)| (*k, v))
            .collect()
    }

    fn gc(&mut self) {
        let min = self.cursors.iter().copied().min().unwrap();
        while let Some((&seq, _)) = self.records.first_key_value() {
            if seq > min {
                break;
            }
            let s = self.records.remove(&seq).unwrap();
            self.bytes -= size(&s);
        }
    }

    fn ack(&mut self, u: usize, through: u64) {
        self.cursors[u] = self.cursors[u].max(through);
        self.gc();
    }
}

fn open(dir: &std::path::Path, max_bytes: u64) -> SledStore {
    let names: Vec<String> = UPLINKS.iter().map(|s| s.to_string()).collect();
    SledStore::open(dir, &names, max_bytes, FullPolicy::DropOldest).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn the_store_behaves_like_its_model(ops in prop::collection::vec(op(), 1..30), small in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        let max_bytes = if small { 2_000 } else { 1 << 30 };
        let mut store = Some(open(dir.path(), max_bytes));
        let mut model = Model { next_seq: 1, max_bytes, ..Model::default() };
        let mut id = 0u64;
        for op in ops {
            let s = store.as_ref().unwrap();
            match op {
                Op::Append(n) => {
                    let batch: Vec<Sample> = (0..n).map(|_| { id += 1; sample(id) }).collect();
                    let incoming: u64 = batch.iter().map(size).sum();
                    let mut evicted = 0;
                    while model.bytes > 0 && model.bytes + incoming > model.max_bytes {
                        let (_, old) = model.records.pop_first().unwrap();
                        model.bytes -= size(&old);
                        evicted += 1;
                    }
                    let appended = s.append(&batch, true).unwrap();
                    prop_assert_eq!(appended.first_seq, model.next_seq);
                    prop_assert_eq!(appended.last_seq, model.next_seq + u64::from(n) - 1);
                    prop_assert_eq!(appended.evicted, evicted);
                    model.evicted += evicted;
                    for sample in batch {
                        model.bytes += size(&sample);
                        model.records.insert(model.next_seq, sample);
                        model.next_seq += 1;
                    }
                }
                Op::Read(u, max) => {
                    let got = s.read(UPLINKS[u], usize::from(max)).unwrap();
                    let want: Vec<(u64, Sample)> = model.pending(u).into_iter().take(usize::from(max)).map(|(k, v)| (k, v.clone())).collect();
                    prop_assert_eq!(got.len(), want.len());
                    for (r, (seq, sample)) in got.iter().zip(want) {
                        prop_assert_eq!(r.seq, seq);
                        prop_assert_eq!(&r.sample, &sample);
                    }
                }
                Op::Ack(u, n) => {
                    let pending = model.pending(u);
                    if let Some((through, _)) = pending.get(usize::from(n).min(pending.len().saturating_sub(1))) {
                        let through = *through;
                        s.ack(UPLINKS[u], through).unwrap();
                        model.ack(u, through);
                    }
                }
                Op::DeadLetter(u, n) => {
                    let batch = s.read(UPLINKS[u], usize::from(n)).unwrap();
                    if let Some(last) = batch.last() {
                        s.dead_letter(UPLINKS[u], &batch, "test").unwrap();
                        model.dead += batch.len() as u64;
                        model.ack(u, last.seq);
                    }
                }
                Op::Reopen => {
                    drop(store.take());
                    store = Some(open(dir.path(), max_bytes));
                }
            }
            let s = store.as_ref().unwrap();
            let stats = s.stats().unwrap();
            prop_assert_eq!(stats.records, model.records.len() as u64);
            prop_assert_eq!(stats.bytes, model.bytes);
            prop_assert_eq!(stats.dead_letters, model.dead);
            for (u, name) in UPLINKS.iter().enumerate() {
                prop_assert_eq!(s.pending(name).unwrap(), model.pending(u).len() as u64, "pending of {}", name);
                prop_assert_eq!(s.cursor(name).unwrap(), model.cursors[u]);
            }
        }
    }
}
