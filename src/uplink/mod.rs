//! Uplinks: each reads batches from its own cursor in the store, sends them, and
//! acknowledges on success. Owns delivery policy — batching, linger, retry with back-off,
//! `Retry-After`, dead-lettering of permanent rejections — and nothing else: it never
//! writes records and never drops one without setting it aside and counting it.

pub mod backoff;
pub mod body;
pub mod http;
pub mod influx;
pub mod local;
pub mod mqtt;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Batching;
use crate::ops::Stats;
use crate::sample::{Record, RecordForm};
use crate::store::{Batch, Committed, Lane, Store, StoreError};
use backoff::Backoff;

/// What became of one batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// The backend has it.
    Delivered,
    /// Transient: try again later (after `after`, when the backend said so).
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    /// The backend refused us (401/403, a redirect): keep the data, alarm, retry slowly.
    Refused { reason: String },
    /// The backend refused this batch for good: set it aside and move on.
    Rejected { reason: String },
    /// The batch is too large for the backend (413): send smaller ones.
    TooLarge { reason: String },
}

/// A destination for batches.
pub trait Sink: Send {
    fn send(&mut self, records: &[Record]) -> impl std::future::Future<Output = Delivery> + Send;
    /// How the sink wants its records. A sink that only writes each record out as JSON
    /// takes them as stored, sparing a decode and an encode per record; one that looks
    /// inside (a topic per device, line protocol, text) takes them decoded.
    fn form(&self) -> RecordForm {
        RecordForm::Sample
    }
}

pub struct UplinkSettings {
    pub name: String,
    /// Marked busy while a batch is read, sent and acknowledged: for the watchdog.
    pub stage: Arc<crate::ops::health::Stage>,
    pub batching: Batching,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub retry_after_max: Duration,
}

/// When an uplink stops. `drain` asks it to send what is pending without waiting for the
/// linger and to stop once nothing is left; `stop` ends it at once (an upload in flight
/// is abandoned and stays in the store).
#[derive(Clone, Default)]
pub struct StopSignals {
    pub drain: CancellationToken,
    pub stop: CancellationToken,
}

/// Delivers from the store until stopped. A batch is retried unchanged (same records,
/// same idempotency key) until it is delivered or set aside.
pub async fn run<S: Sink>(
    mut sink: S,
    settings: UplinkSettings,
    store: Arc<dyn Store>,
    mut committed: watch::Receiver<Committed>,
    stats: Arc<Stats>,
    signals: StopSignals,
) {
    let shutdown = signals.stop;
    let drain = signals.drain;
    let name = settings.name.clone();
    let form = sink.form();
    let mut backoff = Backoff::new(settings.backoff_min, settings.backoff_max);
    let mut max_records = settings.batching.max_records;
    let mut batch: Option<Batch> = None;
    let mut waiting_since: Option<Instant> = None;
    let mut state = UplinkState::Idle;
    stats.update_uplink(&name, |c| c.state = "up".into());

    // Where this uplink stands, per lane, as far as it knows: commits are compared with
    // it to decide whether to read, so waking up on a commit costs no store access.
    let mut seen = match blocking(&store, {
        let name = name.clone();
        move |s| {
            let stats = s.stats()?;
            stats
                .uplinks
                .into_iter()
                .find(|u| u.name == name)
                .map(|u| u.acked)
                .ok_or(StoreError::UnknownCursor(name))
        }
    })
    .await
    {
        Ok(acked) => acked,
        Err(e) => {
            log::error!("uplink {name}: cannot read its cursor: {e}; not starting");
            return;
        }
    };
    // Read once at start whatever the commits say: requeued records and the backlog.
    let mut must_look = true;
    // A main-lane batch being retried, set aside while priority records go first. It is
    // sent again unchanged afterwards (same records, same idempotency key).
    let mut parked: Option<Batch> = None;
    while !shutdown.is_cancelled() {
        let priority_waiting = committed.borrow().positions[1] > seen[1];
        let current = match batch.take() {
            Some(held) if held.lane == Lane::Main && priority_waiting => {
                parked = Some(held);
                must_look = true;
                continue;
            }
            Some(current) => current,
            None => {
                // Mark commits seen *before* looking, so one landing in between wakes us.
                let known = *committed.borrow_and_update();
                let pending = known.positions[0].saturating_sub(seen[0])
                    + known.positions[1].saturating_sub(seen[1]);
                if pending == 0 && !must_look {
                    if drain.is_cancelled() {
                        break;
                    }
                    waiting_since = None;
                    tokio::select! {
                        _ = committed.changed() => {}
                        _ = drain.cancelled() => {}
                        _ = shutdown.cancelled() => break,
                    }
                    continue;
                }
                let since = *waiting_since.get_or_insert_with(Instant::now);
                let due = since + settings.batching.linger;
                // Priority records (anomaly events) do not linger: they are what an
                // operator waits for.
                if !must_look
                    && !priority_waiting
                    && (pending as usize) < max_records
                    && Instant::now() < due
                    && !drain.is_cancelled()
                {
                    tokio::select! {
                        _ = tokio::time::sleep_until(due) => {}
                        _ = committed.changed() => {}
                        _ = drain.cancelled() => {}
                        _ = shutdown.cancelled() => break,
                    }
                    continue;
                }
                let read = {
                    let _busy = settings.stage.busy();
                    blocking(&store, {
                        let name = name.clone();
                        move |s| s.read_as(&name, max_records, form)
                    })
                    .await
                };
                match read {
                    Ok(None) if parked.is_some() => parked.take().expect("parked"),
                    // The parked batch comes first: these would be the same records.
                    Ok(Some(read)) if read.lane == Lane::Main && parked.is_some() => {
                        drop(read);
                        parked.take().expect("parked")
                    }
                    Ok(None) => {
                        // Everything committed is delivered or gone (evicted).
                        seen = known.positions;
                        must_look = false;
                        continue;
                    }
                    Ok(Some(read)) if read.records.is_empty() => {
                        // Only damaged records, already counted: step over them.
                        let _ = ack(&store, &name, read.lane, read.through).await;
                        note_acked(&mut seen, &mut must_look, &read);
                        continue;
                    }
                    Ok(Some(read)) => read,
                    Err(e) => {
                        log::error!("uplink {name}: cannot read the store: {e}");
                        sleep_or_shutdown(Duration::from_secs(1), &shutdown, &drain).await;
                        continue;
                    }
                }
            }
        };

        let busy = settings.stage.busy();
        let outcome = tokio::select! {
            outcome = sink.send(&current.records) => outcome,
            _ = shutdown.cancelled() => {
                log::info!("uplink {name}: shutting down; the batch in flight stays in the store");
                break;
            }
        };
        let first = current.records.first().map_or(0, |r| r.seq);
        let last = current.records.last().map_or(0, |r| r.seq);
        drop(busy);
        match outcome {
            Delivery::Delivered => {
                let _busy = settings.stage.busy();
                if let Err(e) = ack(&store, &name, current.lane, current.through).await {
                    // Not acknowledged: the batch will be sent again (a duplicate, never a loss).
                    log::error!(
                        "uplink {name}: delivered {first}..={last} but cannot record it: {e}"
                    );
                }
                note_acked(&mut seen, &mut must_look, &current);
                stats.update_uplink(&name, |c| {
                    c.delivered += current.records.len() as u64;
                    c.batches += 1;
                    c.state = "up".into();
                });
                state.transition(&name, UplinkState::Idle, "");
                backoff.reset();
                max_records = settings.batching.max_records;
                // The main lane's records have been lingering since before a priority
                // batch went out: they must not start lingering again.
                if current.lane != Lane::Priority {
                    waiting_since = None;
                }
            }
            Delivery::Retry { reason, after } => {
                let delay = match after {
                    Some(after) => after
                        .min(settings.retry_after_max)
                        .max(settings.backoff_min),
                    None => backoff.next_delay(),
                };
                stats.update_uplink(&name, |c| {
                    c.retries += 1;
                    c.state = "retrying".into();
                });
                state.transition(&name, UplinkState::Retrying, &reason);
                log::debug!(
                    "uplink {name}: batch {first}..={last} not delivered ({reason}); retry in {delay:?}"
                );
                batch = Some(current);
                // While draining for shutdown, a backend that is failing will not be
                // waited for: the batch stays in the store.
                if drain.is_cancelled() {
                    break;
                }
                sleep_or_shutdown(delay, &shutdown, &drain).await;
            }
            Delivery::Refused { reason } => {
                let delay = backoff.next_delay();
                stats.update_uplink(&name, |c| {
                    c.retries += 1;
                    c.state = "refused".into();
                });
                state.transition(&name, UplinkState::Refused, &reason);
                batch = Some(current);
                if drain.is_cancelled() {
                    break;
                }
                sleep_or_shutdown(delay, &shutdown, &drain).await;
            }
            Delivery::TooLarge { reason } if current.records.len() > 1 => {
                max_records = (current.records.len() / 2).max(1);
                log::warn!(
                    "uplink {name}: backend refused a batch of {} records as too large ({reason}); \
                     sending at most {max_records} per batch",
                    current.records.len()
                );
                must_look = true;
            }
            Delivery::TooLarge { reason } | Delivery::Rejected { reason } => {
                log::error!(
                    "uplink {name}: backend rejected records {first}..={last} for good ({reason}); \
                     kept in the dead-letter store, moving on"
                );
                let count = current.records.len() as u64;
                let busy = settings.stage.busy();
                let result = blocking(&store, {
                    let (name, current) = (name.clone(), current.clone());
                    move |s| s.dead_letter(&name, &current, &reason)
                })
                .await;
                drop(busy);
                if let Err(e) = result {
                    log::error!(
                        "uplink {name}: cannot set the rejected batch aside: {e}; retrying it"
                    );
                    batch = Some(current);
                    sleep_or_shutdown(backoff.next_delay(), &shutdown, &drain).await;
                    continue;
                }
                note_acked(&mut seen, &mut must_look, &current);
                stats.update_uplink(&name, |c| c.dead_lettered += count);
            }
        }
    }
}

/// What an acknowledged batch tells the uplink about where it stands.
fn note_acked(seen: &mut [u64; 2], must_look: &mut bool, batch: &Batch) {
    match batch.lane {
        Lane::Main | Lane::Priority => {
            let l = batch.lane as usize;
            seen[l] = seen[l].max(batch.through);
        }
        // Requeued records are not counted by commits: keep looking until none are left.
        Lane::Requeued => *must_look = true,
    }
}

async fn ack(
    store: &Arc<dyn Store>,
    name: &str,
    lane: Lane,
    through: u64,
) -> Result<(), StoreError> {
    let name = name.to_string();
    blocking(store, move |s| s.ack(&name, lane, through)).await
}

/// Logs once per change of state, not once per attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UplinkState {
    Idle,
    Retrying,
    Refused,
}

impl UplinkState {
    fn transition(&mut self, name: &str, next: UplinkState, reason: &str) {
        if *self == next {
            return;
        }
        match next {
            UplinkState::Idle => log::info!("uplink {name}: delivering again"),
            UplinkState::Retrying => log::warn!(
                "uplink {name}: backend unavailable ({reason}); buffering and retrying with back-off"
            ),
            UplinkState::Refused => log::error!(
                "uplink {name}: delivery refused ({reason}); data is kept and retried — check the token, URL and TLS certificates"
            ),
        }
        *self = next;
    }
}

async fn sleep_or_shutdown(
    delay: Duration,
    shutdown: &CancellationToken,
    drain: &CancellationToken,
) {
    tokio::select! {
        _ = tokio::time::sleep(delay) => {}
        _ = shutdown.cancelled() => {}
        _ = drain.cancelled() => {}
    }
}

async fn blocking<T: Send + 'static>(
    store: &Arc<dyn Store>,
    f: impl FnOnce(&dyn Store) -> Result<T, crate::store::StoreError> + Send + 'static,
) -> Result<T, crate::store::StoreError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(store.as_ref()))
        .await
        .unwrap_or_else(|e| Err(StoreError::Task(e.to_string())))
}
