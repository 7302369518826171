//! The periodic one-line summary: what a person on site reads to know the gateway is
//! alive and keeping up.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Stats;
use crate::config::units::ByteSize;
use crate::store::Store;

pub async fn run(
    interval: Duration,
    stats: Arc<Stats>,
    store: Arc<dyn Store>,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.tick().await;
    let mut last_in = 0;
    let mut last_tick = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let now = tokio::time::Instant::now();
        let samples_in = Stats::get(&stats.samples_in);
        let rate =
            (samples_in - last_in) as f64 / now.duration_since(last_tick).as_secs_f64().max(1e-3);
        last_in = samples_in;
        last_tick = now;
        log::info!("{}", line(&stats, &store, rate).await);
    }
}

/// `summary: in 40.0 samples/s; committed 1200; buffer 12 records (3.4KiB); uplink cloud up
/// delivered 1188 lag 12; decode errors 0; evicted 0`
pub async fn line(stats: &Stats, store: &Arc<dyn Store>, rate: f64) -> String {
    let store = store.clone();
    let store_stats = tokio::task::spawn_blocking(move || store.stats()).await;
    let mut text = format!(
        "summary: in {rate:.1} samples/s; committed {}",
        Stats::get(&stats.committed)
    );
    if let Ok(Ok(s)) = &store_stats {
        text.push_str(&format!(
            "; buffer {} records ({})",
            s.records,
            ByteSize(s.bytes)
        ));
        if s.priority_records > 0 {
            text.push_str(&format!(", {} in the priority lane", s.priority_records));
        }
        let uplinks = stats.uplinks();
        for backlog in &s.uplinks {
            let (name, lag) = (&backlog.name, backlog.pending);
            let counters = uplinks.get(name).cloned().unwrap_or_default();
            text.push_str(&format!(
                "; uplink {name} {} delivered {} lag {lag}",
                counters.state, counters.delivered
            ));
            if counters.dead_lettered > 0 {
                text.push_str(&format!(" dead-lettered {}", counters.dead_lettered));
            }
        }
        if s.lost_on_disk > 0 {
            text.push_str(&format!(
                "; records lost to disk damage at start {}",
                s.lost_on_disk
            ));
        }
        if s.damaged_total > s.lost_on_disk {
            text.push_str(&format!(
                "; damaged records quarantined {}",
                s.damaged_total - s.lost_on_disk
            ));
        }
        if s.expired_total > 0 {
            text.push_str(&format!("; expired (max_age) {}", s.expired_total));
        }
    }
    let polls = Stats::get(&stats.modbus_polls);
    if polls > 0 {
        text.push_str(&format!(
            "; modbus polls {polls} (failed {}, timeouts {}, exceptions {}, skipped {} overrun / {} breaker / {} store busy)",
            Stats::get(&stats.modbus_failed_polls),
            Stats::get(&stats.modbus_timeouts),
            Stats::get(&stats.modbus_exceptions),
            Stats::get(&stats.modbus_skipped_overrun),
            Stats::get(&stats.modbus_skipped_breaker),
            Stats::get(&stats.modbus_skipped_backpressure),
        ));
    }
    text.push_str(&format!(
        "; decode errors {}",
        Stats::get(&stats.decode_errors)
    ));
    let by_topic = stats.decode_errors_by_topic();
    if !by_topic.is_empty() {
        // The worst few topics, so a misbehaving device can be found from the summary alone.
        let mut worst: Vec<(&String, &u64)> = by_topic.iter().collect();
        worst.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let shown: Vec<String> = worst
            .iter()
            .take(3)
            .map(|(t, n)| format!("{t} {n}"))
            .collect();
        text.push_str(&format!(
            " ({}{})",
            shown.join(", "),
            if worst.len() > 3 {
                format!(", {} more topics", worst.len() - 3)
            } else {
                String::new()
            }
        ));
    }
    let windows = Stats::get(&stats.inference_windows);
    if windows > 0 || Stats::get(&stats.inference_failures) > 0 {
        text.push_str(&format!(
            "; scored {windows} windows in {} model runs, anomalies started {}, model failures {}",
            Stats::get(&stats.inference_batches),
            Stats::get(&stats.anomaly_events),
            Stats::get(&stats.inference_failures)
        ));
    }
    let dropped = Stats::get(&stats.dropped_qos0);
    if dropped > 0 {
        text.push_str(&format!(
            "; QoS 0 messages dropped while the store was busy {dropped}"
        ));
    }
    text.push_str(&format!("; evicted {}", Stats::get(&stats.evicted)));
    text
}

/// A short line for `systemctl status` (systemd's `STATUS=`).
pub fn status(stats: &Stats, store: &Arc<dyn Store>) -> String {
    let mut text = format!("committed {}", Stats::get(&stats.committed));
    if let Ok(s) = store.stats() {
        text.push_str(&format!("; buffer {} records", s.records));
    }
    let mut uplinks: Vec<(String, crate::ops::stats::UplinkCounters)> =
        stats.uplinks().into_iter().collect();
    uplinks.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, c) in uplinks {
        text.push_str(&format!("; {name} {} ({} delivered)", c.state, c.delivered));
    }
    text
}
