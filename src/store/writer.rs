//! The one task that appends to the store. Sources send [`Ingest`] items through a
//! bounded channel; the writer takes everything waiting (up to the commit batch), appends
//! it with a single flush (group commit), and only then runs each item's commit callback
//! — in arrival order, which is how an MQTT source acknowledges messages in receive
//! order, after they are safe.
//!
//! When the store refuses (full under the `block` policy, disk full, I/O error) the
//! writer holds the batch and retries: the channel fills, and the sources feel the
//! back-pressure instead of data being dropped.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::{Committed, Lane, Store, StoreError};
use crate::config::{Durability, PriorityRules};
use crate::ops::Stats;
use crate::sample::{Sample, Value};

/// Runs once the samples it came with are committed (for MQTT: send the PUBACK).
pub type OnCommit = Box<dyn FnOnce() + Send>;

/// Samples from one source event (one MQTT message, one poll), committed together.
pub struct Ingest {
    pub samples: Vec<Sample>,
    pub on_commit: Option<OnCommit>,
    /// The sender can take nothing more until this is committed (an MQTT source whose
    /// in-flight window it fills): the pipeline does not gather for it, and the writer
    /// commits it without waiting out `commit_spacing`.
    pub commit_now: bool,
}

impl Ingest {
    pub fn new(samples: Vec<Sample>) -> Self {
        Ingest {
            samples,
            on_commit: None,
            commit_now: false,
        }
    }
}

/// Pending samples past which a commit no longer waits out `commit_spacing`: the flush
/// is shared well enough, and waiting longer would only hold MQTT acknowledgements back
/// while the broker's in-flight window fills (at 40,000 msg/s a 25 ms wait is 1,000).
const SHARED_ENOUGH: usize = 256;

/// How often the store's watermark is brought up to date while records arrive.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

pub struct WriterSettings {
    /// Marked busy during every store call: for the watchdog.
    pub stage: std::sync::Arc<crate::ops::health::Stage>,
    pub durability: Durability,
    pub flush_interval: Duration,
    pub commit_batch: usize,
    /// Shortest time between two commits (see the group commit in `run`). It bounds the
    /// flush rate (and flash wear, and the CPU a flush costs) and adds at most this much
    /// latency.
    pub commit_spacing: Duration,
    pub priority: PriorityRules,
}

/// Which lane a sample goes to: the priority lane is sent before the backlog.
pub fn lane_of(rules: &PriorityRules, sample: &Sample) -> Lane {
    let is_event = sample.source == crate::pipeline::stage::EVENT_SOURCE
        && matches!(sample.fields.get("event"), Some(Value::Text(e)) if e.starts_with("anomaly_"));
    let marked = (rules.anomaly_events && is_event)
        || (rules.anomalous_samples && sample.anomaly.as_ref().is_some_and(|a| a.is_anomaly))
        || rules
            .devices
            .iter()
            .any(|p| crate::pipeline::glob::matches(p, &sample.device))
        || rules
            .fields
            .iter()
            .any(|f| match sample.fields.get(f.as_str()) {
                Some(Value::Bool(b)) => *b,
                Some(Value::Int(i)) => *i != 0,
                Some(Value::Float(x)) => *x != 0.0,
                _ => false,
            });
    if marked { Lane::Priority } else { Lane::Main }
}

/// Runs until every sender is dropped and the channel is drained, then flushes. It is
/// stopped by stopping the sources, never cut off: that is what makes shutdown lossless.
pub async fn run(
    store: Arc<dyn Store>,
    mut rx: mpsc::Receiver<Ingest>,
    settings: WriterSettings,
    committed: watch::Sender<Committed>,
    stats: Arc<Stats>,
) {
    let durable = settings.durability == Durability::Fsync;
    let mut flush_timer = tokio::time::interval(settings.flush_interval);
    flush_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut unflushed = false;
    let mut pending: Vec<Ingest> = Vec::new();
    let mut last_commit = tokio::time::Instant::now() - settings.commit_spacing;
    let mut checkpoint_due = tokio::time::Instant::now() + CHECKPOINT_INTERVAL;
    let mut failing: Option<Failing> = None;
    let mut checkpoint_failing = false;
    let mut eviction_log = EvictionLog::default();
    loop {
        if pending.is_empty() {
            tokio::select! {
                item = rx.recv() => match item {
                    Some(item) => pending.push(item),
                    None => break,
                },
                _ = flush_timer.tick(), if !durable && unflushed => {
                    let flushed = {
                        let _busy = settings.stage.busy();
                        flush(&store).await
                    };
                    if flushed.is_ok() {
                        unflushed = false;
                        committed.send_replace(store.committed());
                    }
                    continue;
                }
                // Also while no records arrive: acknowledgements free segments, and max_age
                // applies to a quiet store too. It writes nothing when nothing changed.
                _ = tokio::time::sleep_until(checkpoint_due) => {
                    checkpoint(&store, &mut checkpoint_failing, &settings.stage).await;
                    committed.send_replace(store.committed());
                    checkpoint_due = tokio::time::Instant::now() + CHECKPOINT_INTERVAL;
                    continue;
                }
            }
        }
        let mut count: usize = pending.iter().map(|i| i.samples.len()).sum();
        // Group commit: commits are spaced at least settings.commit_spacing apart, and what
        // arrives meanwhile joins the next one. Under a steady trickle from a thousand
        // devices this turns a flush per sample into one per few milliseconds; after a
        // quiet spell the first sample commits at once.
        let earliest = last_commit + settings.commit_spacing;
        let mut commit_now = pending.iter().any(|i| i.commit_now);
        loop {
            while count < settings.commit_batch {
                match rx.try_recv() {
                    Ok(item) => {
                        count += item.samples.len();
                        commit_now |= item.commit_now;
                        pending.push(item);
                    }
                    Err(_) => break,
                }
            }
            if commit_now
                || count >= settings.commit_batch.min(SHARED_ENOUGH)
                || tokio::time::Instant::now() >= earliest
            {
                break;
            }
            tokio::select! {
                item = rx.recv() => match item {
                    Some(item) => {
                        count += item.samples.len();
                        commit_now |= item.commit_now;
                        pending.push(item);
                    }
                    None => break,
                },
                _ = tokio::time::sleep_until(earliest) => break,
            }
        }
        last_commit = tokio::time::Instant::now();
        // Moved, not cloned, into the append; handed back if it fails, for the retry.
        let entries: Vec<(Lane, Sample)> = pending
            .iter_mut()
            .flat_map(|i| std::mem::take(&mut i.samples))
            .map(|s| (lane_of(&settings.priority, &s), s))
            .collect();
        let result = if entries.is_empty() {
            Ok(None)
        } else {
            let store = store.clone();
            let _busy = settings.stage.busy();
            let appended = tokio::task::spawn_blocking(move || {
                let result = store.append(&entries, durable);
                (entries, result)
            })
            .await;
            match appended {
                Ok((_, Ok(appended))) => Ok(Some(appended)),
                Ok((entries, Err(e))) => {
                    if let Some(first) = pending.first_mut() {
                        first.samples = entries.into_iter().map(|(_, s)| s).collect();
                    }
                    Err(e)
                }
                Err(join_error) => {
                    log::error!("store writer: append panicked: {join_error}");
                    Err(StoreError::Task("append panicked".into()))
                }
            }
        };
        match result {
            Ok(appended) => {
                if let Some(appended) = appended {
                    Stats::add(&stats.committed, appended.last_seq + 1 - appended.first_seq);
                    if appended.evicted > 0 {
                        Stats::add(&stats.evicted, appended.evicted);
                        eviction_log.note(appended.evicted);
                    }
                    if let Some(since) = failing.take() {
                        stats
                            .store_refusing
                            .store(false, std::sync::atomic::Ordering::Relaxed);
                        log::info!(
                            "store commits again after {} ({} attempts failed)",
                            humantime::format_duration(Duration::from_secs(
                                since.started.elapsed().as_secs()
                            )),
                            since.attempts
                        );
                    }
                    if durable {
                        committed.send_replace(store.committed());
                    }
                    unflushed = !durable;
                    if tokio::time::Instant::now() >= checkpoint_due {
                        checkpoint(&store, &mut checkpoint_failing, &settings.stage).await;
                        committed.send_replace(store.committed());
                        checkpoint_due = tokio::time::Instant::now() + CHECKPOINT_INTERVAL;
                    }
                }
                for item in pending.drain(..) {
                    if let Some(on_commit) = item.on_commit {
                        on_commit();
                    }
                }
            }
            Err(StoreError::Full { used, max }) => {
                stats
                    .store_refusing
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                if failing.get_or_insert_with(Failing::new).first() {
                    log::warn!(
                        "store full ({used} of {max} bytes, block policy): holding {count} samples; \
                         sources are held back until the uplinks catch up"
                    );
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
                // Acknowledgements free room only at a checkpoint.
                checkpoint(&store, &mut checkpoint_failing, &settings.stage).await;
            }
            Err(e) => {
                Stats::add(&stats.store_errors, 1);
                let disk_full = matches!(&e, StoreError::Io { source, .. }
                    if source.kind() == std::io::ErrorKind::StorageFull);
                stats
                    .store_refusing
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                if failing.get_or_insert_with(Failing::new).first() {
                    if disk_full {
                        log::error!(
                            "disk full: cannot commit ({e}); holding {count} samples, sources are held back \
                             until space is freed (delivered records free theirs)"
                        );
                    } else {
                        log::error!(
                            "store commit failed, holding {count} samples and retrying: {e}"
                        );
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                // Delivered segments are deleted at a checkpoint: that is what frees a
                // full disk.
                checkpoint(&store, &mut checkpoint_failing, &settings.stage).await;
            }
        }
    }
    // Flushes too.
    checkpoint(&store, &mut checkpoint_failing, &settings.stage).await;
    committed.send_replace(store.committed());
}

/// A run of failed commits: logged when it starts and when it ends, not per attempt.
struct Failing {
    started: std::time::Instant,
    attempts: u64,
}

impl Failing {
    fn new() -> Self {
        Failing {
            started: std::time::Instant::now(),
            attempts: 0,
        }
    }

    /// Counts an attempt; true for the first.
    fn first(&mut self) -> bool {
        self.attempts += 1;
        self.attempts == 1
    }
}

/// Evictions are logged when they start, then at most once a minute with the count.
#[derive(Default)]
struct EvictionLog {
    last: Option<std::time::Instant>,
    unreported: u64,
}

impl EvictionLog {
    const EVERY: Duration = Duration::from_secs(60);

    fn note(&mut self, evicted: u64) {
        self.unreported += evicted;
        let due = self.last.is_none_or(|t| t.elapsed() >= Self::EVERY);
        if due {
            log::warn!(
                "store full: evicted the {} oldest records to make room (drop_oldest policy){}",
                self.unreported,
                if self.last.is_some() {
                    " since the last report"
                } else {
                    ""
                }
            );
            self.last = Some(std::time::Instant::now());
            self.unreported = 0;
        }
    }
}

/// Logs a failure when one starts and when it ends, not every second.
async fn checkpoint(store: &Arc<dyn Store>, failing: &mut bool, stage: &crate::ops::health::Stage) {
    let _busy = stage.busy();
    let store = store.clone();
    let result = match tokio::task::spawn_blocking(move || store.checkpoint()).await {
        Ok(result) => result,
        Err(e) => Err(StoreError::Task(e.to_string())),
    };
    match result {
        Ok(()) if *failing => {
            log::info!("store: checkpoints work again");
            *failing = false;
        }
        Ok(()) => {}
        Err(e) if !*failing => {
            log::error!(
                "store: checkpoint failed (cursors not made durable, delivered segments not deleted): {e}"
            );
            *failing = true;
        }
        Err(_) => {}
    }
}

async fn flush(store: &Arc<dyn Store>) -> Result<(), StoreError> {
    let store = store.clone();
    let result = tokio::task::spawn_blocking(move || store.flush())
        .await
        .unwrap_or_else(|_| Err(StoreError::Task("flush panicked".into())));
    if let Err(e) = &result {
        log::error!("store flush failed: {e}");
    }
    result
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::sync::{mpsc, oneshot, watch};

    use super::*;
    use crate::config::FullPolicy;
    use crate::ops::health::Health;
    use crate::store::{LogStore, StoreOptions};

    fn ingest(n: i64, commit_now: bool) -> (Ingest, oneshot::Receiver<()>) {
        let (done_tx, done_rx) = oneshot::channel();
        let mut sample = Sample::new("test", "pump-1", 1_790_000_000_000 + n);
        sample.fields.insert("n".into(), Value::Int(n));
        let ingest = Ingest {
            samples: vec![sample],
            on_commit: Some(Box::new(move || {
                let _ = done_tx.send(());
            })),
            commit_now,
        };
        (ingest, done_rx)
    }

    async fn committed(done: oneshot::Receiver<()>, what: &str) {
        tokio::time::timeout(Duration::from_secs(10), done)
            .await
            .unwrap_or_else(|_| panic!("{what}"))
            .unwrap();
    }

    /// Commits an hour apart: only a sender waiting on its commit gets one sooner.
    #[tokio::test]
    async fn a_commit_now_ingest_does_not_wait_out_the_commit_spacing() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(
            LogStore::open(
                dir.path(),
                &["cloud".to_string()],
                StoreOptions::new(64 << 20, FullPolicy::DropOldest),
            )
            .unwrap(),
        );
        let settings = WriterSettings {
            stage: Health::from_env().stage("store", Duration::from_secs(10)),
            durability: Durability::Fsync,
            flush_interval: Duration::from_secs(1),
            commit_batch: 2048,
            commit_spacing: Duration::from_secs(3600),
            priority: PriorityRules::default(),
        };
        let (tx, rx) = mpsc::channel(16);
        let (committed_tx, _committed_rx) = watch::channel(Committed::default());
        let writer = tokio::spawn(run(
            store.clone(),
            rx,
            settings,
            committed_tx,
            Arc::new(Stats::default()),
        ));

        // After a quiet spell the first commit is at once.
        let (first, first_done) = ingest(0, false);
        tx.send(first).await.unwrap();
        committed(first_done, "the first ingest commits at once").await;

        // The next one waits for the spacing: an hour.
        let (waiting, mut waiting_done) = ingest(1, false);
        tx.send(waiting).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            waiting_done.try_recv().is_err(),
            "an ordinary ingest waits out the commit spacing"
        );

        // One that fills its sender's window is committed at once, with what waits.
        let (urgent, urgent_done) = ingest(2, true);
        tx.send(urgent).await.unwrap();
        committed(
            urgent_done,
            "a commit-now ingest commits without waiting an hour",
        )
        .await;
        waiting_done
            .try_recv()
            .expect("what waited is committed with it, in order");
        assert_eq!(
            store.committed().seq,
            3,
            "three records committed, seq 1 to 3"
        );

        drop(tx);
        tokio::time::timeout(Duration::from_secs(10), writer)
            .await
            .unwrap()
            .unwrap();
    }
}
