//! Uplinks: each reads batches from its own cursor in the store, sends them, and
//! acknowledges on success. Owns delivery policy — batching, linger, retry with back-off,
//! `Retry-After`, dead-lettering of permanent rejections — and nothing else: it never
//! writes records and never drops one without setting it aside and counting it.

pub mod backoff;
pub mod body;
pub mod http;
pub mod local;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Batching;
use crate::ops::Stats;
use crate::sample::Record;
use crate::store::Store;
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
}

pub struct UplinkSettings {
    pub name: String,
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
    mut committed: watch::Receiver<u64>,
    stats: Arc<Stats>,
    signals: StopSignals,
) {
    let shutdown = signals.stop;
    let drain = signals.drain;
    let name = settings.name.clone();
    let mut backoff = Backoff::new(settings.backoff_min, settings.backoff_max);
    let mut max_records = settings.batching.max_records;
    let mut batch: Option<Vec<Record>> = None;
    let mut waiting_since: Option<Instant> = None;
    let mut state = UplinkState::Idle;
    stats.update_uplink(&name, |c| c.state = "up".into());

    let mut cursor = match blocking(&store, {
        let name = name.clone();
        move |s| s.cursor(&name)
    })
    .await
    {
        Ok(cursor) => cursor,
        Err(e) => {
            log::error!("uplink {name}: cannot read its cursor: {e}; not starting");
            return;
        }
    };
    while !shutdown.is_cancelled() {
        let records = match batch.take() {
            Some(records) => records,
            None => {
                // Mark commits seen *before* looking, so one landing in between wakes us.
                // The estimate needs no store access: commits only wake us, they cost
                // nothing more while a batch lingers.
                let known_last = *committed.borrow_and_update();
                let pending = known_last.saturating_sub(cursor);
                if pending == 0 {
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
                if (pending as usize) < max_records && Instant::now() < due && !drain.is_cancelled()
                {
                    tokio::select! {
                        _ = tokio::time::sleep_until(due) => {}
                        _ = committed.changed() => {}
                        _ = drain.cancelled() => {}
                        _ = shutdown.cancelled() => break,
                    }
                    continue;
                }
                let read = blocking(&store, {
                    let name = name.clone();
                    move |s| s.read(&name, max_records)
                })
                .await;
                match read {
                    Ok(records) if records.is_empty() => {
                        // Everything up to what was committed is gone (evicted): nothing to send.
                        cursor = cursor.max(known_last);
                        continue;
                    }
                    Ok(records) => records,
                    Err(e) => {
                        log::error!("uplink {name}: cannot read the store: {e}");
                        sleep_or_shutdown(Duration::from_secs(1), &shutdown, &drain).await;
                        continue;
                    }
                }
            }
        };

        let outcome = tokio::select! {
            outcome = sink.send(&records) => outcome,
            _ = shutdown.cancelled() => {
                log::info!("uplink {name}: shutting down; the batch in flight stays in the store");
                break;
            }
        };
        let first = records.first().map_or(0, |r| r.seq);
        let last = records.last().map_or(0, |r| r.seq);
        match outcome {
            Delivery::Delivered => {
                if let Err(e) = blocking(&store, {
                    let name = name.clone();
                    move |s| s.ack(&name, last)
                })
                .await
                {
                    // Not acknowledged: the batch will be sent again (a duplicate, never a loss).
                    log::error!(
                        "uplink {name}: delivered {first}..={last} but cannot record it: {e}"
                    );
                }
                cursor = last;
                stats.update_uplink(&name, |c| {
                    c.delivered += records.len() as u64;
                    c.batches += 1;
                    c.state = "up".into();
                });
                state.transition(&name, UplinkState::Idle, "");
                backoff.reset();
                max_records = settings.batching.max_records;
                waiting_since = None;
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
                batch = Some(records);
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
                batch = Some(records);
                // While draining for shutdown, a backend that is failing will not be
                // waited for: the batch stays in the store.
                if drain.is_cancelled() {
                    break;
                }
                sleep_or_shutdown(delay, &shutdown, &drain).await;
            }
            Delivery::TooLarge { reason } if records.len() > 1 => {
                max_records = (records.len() / 2).max(1);
                log::warn!(
                    "uplink {name}: backend refused a batch of {} records as too large ({reason}); \
                     sending at most {max_records} per batch",
                    records.len()
                );
            }
            Delivery::TooLarge { reason } | Delivery::Rejected { reason } => {
                log::error!(
                    "uplink {name}: backend rejected records {first}..={last} for good ({reason}); \
                     kept in the dead-letter store, moving on"
                );
                let count = records.len() as u64;
                let result = blocking(&store, {
                    let name = name.clone();
                    move |s| s.dead_letter(&name, &records, &reason)
                })
                .await;
                if let Err(e) = result {
                    log::error!(
                        "uplink {name}: cannot set the rejected batch aside: {e}; retrying it"
                    );
                    sleep_or_shutdown(backoff.next_delay(), &shutdown, &drain).await;
                    continue;
                }
                cursor = last;
                stats.update_uplink(&name, |c| c.dead_lettered += count);
            }
        }
    }
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
        .unwrap_or_else(|e| {
            Err(crate::store::StoreError::Io(sled::Error::Unsupported(
                format!("store task failed: {e}"),
            )))
        })
}
