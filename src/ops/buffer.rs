//! `tidegate buffer …`: what an operator does with the offline store. Reading (`stats`,
//! `peek`, `export`) is safe while the daemon runs; changing (`requeue-dead-letters`,
//! `purge`) takes the store's lock and refuses, naming the daemon's pid, while it runs.

use std::io::Write;
use std::path::Path;

use crate::config::units::ByteSize;
use crate::store::inspect::Inspection;
use crate::store::{LogStore, StoreError, StoreOptions, StoreStats};

#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    DeadLetters(#[from] crate::store::dead::DeadLetterError),
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
    #[error("{0}")]
    Refused(String),
}

fn running_note(inspection: &Inspection) -> String {
    match inspection.running {
        Some(pid) if pid > 0 => format!("tidegate running, pid {pid}"),
        Some(_) => "in use by a running tidegate".to_string(),
        None => "tidegate not running".to_string(),
    }
}

pub fn stats_json(stats: &StoreStats, running: Option<u32>) -> serde_json::Value {
    serde_json::json!({
        "running_pid": running,
        "records": stats.records,
        "bytes": stats.bytes,
        "priority_records": stats.priority_records,
        "last_seq": stats.last_seq,
        "disk_bytes": stats.disk_bytes,
        "dead_letters": stats.dead_letters,
        "requeued": stats.requeued,
        "evicted_total": stats.evicted_total,
        "expired_total": stats.expired_total,
        "purged_total": stats.purged_total,
        "damaged_total": stats.damaged_total,
        "uplinks": stats.uplinks.iter().map(|u| serde_json::json!({
            "name": u.name, "pending": u.pending,
            "acked_main": u.acked[0], "acked_priority": u.acked[1],
        })).collect::<Vec<_>>(),
    })
}

pub fn stats(state_dir: &Path, json: bool, out: &mut dyn Write) -> Result<(), BufferError> {
    let inspection = Inspection::open(state_dir)?;
    let s = inspection.stats();
    if json {
        writeln!(out, "{}", stats_json(&s, inspection.running))?;
        return Ok(());
    }
    writeln!(
        out,
        "store        {} ({})",
        state_dir.display(),
        running_note(&inspection)
    )?;
    writeln!(
        out,
        "records      {} ({}){}",
        s.records,
        ByteSize(s.bytes),
        if s.priority_records > 0 {
            format!(", {} in the priority lane", s.priority_records)
        } else {
            String::new()
        }
    )?;
    writeln!(out, "on disk      {}", ByteSize(s.disk_bytes))?;
    writeln!(out, "last seq     {}", s.last_seq)?;
    for u in &s.uplinks {
        writeln!(
            out,
            "uplink       {}: {} to send (acknowledged through position {} main, {} priority)",
            u.name, u.pending, u.acked[0], u.acked[1]
        )?;
    }
    writeln!(
        out,
        "dead letters {}{}",
        s.dead_letters,
        if s.requeued > 0 {
            format!(" ({} requeued, waiting to be sent again)", s.requeued)
        } else {
            String::new()
        }
    )?;
    writeln!(
        out,
        "dropped      evicted {}, expired {}, purged {}; damaged on disk {}",
        s.evicted_total, s.expired_total, s.purged_total, s.damaged_total
    )?;
    Ok(())
}

/// The next records an uplink will send (`peek`) or all of them (`export`), as NDJSON
/// with the lane they wait in. Dead letters instead with `dead_letters`.
pub fn records(
    state_dir: &Path,
    uplink: Option<&str>,
    dead_letters: bool,
    limit: usize,
    out: &mut dyn Write,
) -> Result<usize, BufferError> {
    let mut inspection = Inspection::open(state_dir)?;
    if dead_letters {
        let Some(dead) = inspection.dead_letters() else {
            return Err(BufferError::Refused(format!(
                "the dead letters can be read only while tidegate is stopped ({}); \
                 `tidegate buffer stats` shows how many there are",
                running_note(&inspection)
            )));
        };
        let mut n = 0;
        for value in dead.export(uplink)?.into_iter().take(limit) {
            writeln!(out, "{value}")?;
            n += 1;
        }
        return Ok(n);
    }
    let uplink = match uplink {
        Some(u) => Some(u.to_string()),
        None if inspection.snapshot.uplinks.len() == 1 => {
            inspection.snapshot.uplinks.keys().next().cloned()
        }
        None => None,
    };
    let mut failure = None;
    let n = inspection.each_pending(uplink.as_deref(), limit, |lane, record| {
        if failure.is_some() {
            return;
        }
        let mut value = serde_json::to_value(record).expect("record serialises");
        value["lane"] = serde_json::Value::from(lane.name());
        if let Err(e) = writeln!(out, "{value}") {
            failure = Some(e);
        }
    })?;
    if let Some(e) = failure {
        return Err(e.into());
    }
    Ok(n)
}

/// Opens the store for a change, with every uplink it knows (none is dropped).
fn open_for_change(state_dir: &Path) -> Result<LogStore, BufferError> {
    if !state_dir.join("log").exists() {
        return Err(BufferError::Refused(format!(
            "no tidegate store in {} (is state_dir right?)",
            state_dir.display()
        )));
    }
    let uplinks: Vec<String> = crate::store::snapshot::read_newest(state_dir)
        .map(|s| s.uplinks.into_keys().collect())
        .unwrap_or_default();
    let options = StoreOptions::new(u64::MAX, crate::config::FullPolicy::DropOldest);
    Ok(LogStore::open_with_lock_wait(
        state_dir,
        &uplinks,
        options,
        std::time::Duration::ZERO,
    )?)
}

pub fn requeue(state_dir: &Path, uplink: Option<&str>) -> Result<u64, BufferError> {
    let store = open_for_change(state_dir)?;
    Ok(store.dead_letters().requeue(uplink)?)
}

/// Drops every record still to send (or every dead letter). Returns how many.
pub fn purge(state_dir: &Path, dead_letters: bool) -> Result<u64, BufferError> {
    let store = open_for_change(state_dir)?;
    if dead_letters {
        return Ok(store.dead_letters().purge()?);
    }
    Ok(store.purge()?)
}
