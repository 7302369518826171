//! Counters shared by every stage. Plain atomics: updating one never waits on a lock in
//! the data path, except the per-topic decode error map (touched only on bad input).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Most distinct topics tracked for decode errors; the rest are counted under `(other)`
/// so a misbehaving publisher with random topics cannot grow memory without bound.
const MAX_ERROR_TOPICS: usize = 256;

#[derive(Default)]
pub struct Stats {
    /// Samples produced by sources.
    pub samples_in: AtomicU64,
    /// MQTT messages received.
    pub messages_in: AtomicU64,
    /// Samples committed to the store.
    pub committed: AtomicU64,
    /// Oldest records evicted because the store was full.
    pub evicted: AtomicU64,
    /// Commits that failed and were retried.
    pub store_errors: AtomicU64,
    pub decode_errors: AtomicU64,
    /// Windows scored, model runs, runs that failed (the binding is then switched off),
    /// samples left unscored because of bad values, anomaly start events.
    pub inference_windows: AtomicU64,
    pub inference_batches: AtomicU64,
    pub inference_failures: AtomicU64,
    pub inference_skipped: AtomicU64,
    pub anomaly_events: AtomicU64,
    /// Modbus device polls attempted, and those in which no value could be read.
    pub modbus_polls: AtomicU64,
    pub modbus_failed_polls: AtomicU64,
    /// Polls not made: the slot had already passed (overrun), or the device's breaker
    /// was open.
    pub modbus_skipped_overrun: AtomicU64,
    pub modbus_skipped_breaker: AtomicU64,
    /// Polls not made because the store was not taking samples (back-pressure).
    pub modbus_skipped_backpressure: AtomicU64,
    /// QoS 0 messages dropped because the store was not taking messages.
    pub dropped_qos0: AtomicU64,
    /// The store refuses commits right now (full under `block`, disk full, I/O error):
    /// sources that cannot be held back (a poll) stop producing instead of queueing.
    pub store_refusing: std::sync::atomic::AtomicBool,
    pub modbus_timeouts: AtomicU64,
    pub modbus_exceptions: AtomicU64,
    decode_errors_by_topic: Mutex<BTreeMap<String, u64>>,
    uplinks: Mutex<BTreeMap<String, UplinkCounters>>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UplinkCounters {
    pub delivered: u64,
    pub batches: u64,
    pub retries: u64,
    pub dead_lettered: u64,
    /// "up", "retrying", "auth failed", ...
    pub state: String,
}

impl Stats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub fn decode_error(&self, topic: &str) {
        Stats::add(&self.decode_errors, 1);
        let mut map = self
            .decode_errors_by_topic
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_ERROR_TOPICS && !map.contains_key(topic) {
            *map.entry("(other)".to_string()).or_default() += 1;
        } else {
            *map.entry(topic.to_string()).or_default() += 1;
        }
    }

    pub fn decode_errors_by_topic(&self) -> BTreeMap<String, u64> {
        self.decode_errors_by_topic
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn update_uplink(&self, name: &str, f: impl FnOnce(&mut UplinkCounters)) {
        let mut map = self.uplinks.lock().unwrap_or_else(|e| e.into_inner());
        f(map.entry(name.to_string()).or_default());
    }

    pub fn uplinks(&self) -> BTreeMap<String, UplinkCounters> {
        self.uplinks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}
