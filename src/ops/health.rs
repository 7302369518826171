//! Liveness for systemd's watchdog, and the `STATUS=` line of `systemctl status`.
//!
//! Every stage that can hang (the store writer, each uplink, each Modbus line, the
//! inference stage) holds a [`Stage`]. It marks itself busy while it works on something
//! (an append, a batch in flight, a poll) and idle while it waits for work; a stage busy
//! for longer than its allowance (its own deadline plus the watchdog interval) is hung.
//! The watchdog is pinged only while no stage is hung, so systemd restarts a daemon whose
//! writer is stuck on a dead disk or whose uplink is stuck in a call that never returns —
//! but not one that is merely idle, or waiting out a long outage.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// Sends a notification to systemd (`$NOTIFY_SOCKET`), if it is listening. Never blocks:
/// when the manager does not read its socket fast enough, the message is dropped rather
/// than stalling the thread that sends it (a blocked send on a full datagram queue would
/// hold up shutdown, or the runtime).
pub fn notify(lines: &[&str]) {
    use std::os::unix::net::UnixDatagram;
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(socket) = UnixDatagram::unbound() else {
        return;
    };
    if socket.set_nonblocking(true).is_err() {
        return;
    }
    let message = lines.join("\n");
    let bytes = path.as_encoded_bytes();
    let _ = if let Some(name) = bytes.strip_prefix(b"@") {
        // An abstract socket (systemd in a container uses them).
        use std::os::linux::net::SocketAddrExt;
        match std::os::unix::net::SocketAddr::from_abstract_name(name) {
            Ok(address) => socket.send_to_addr(message.as_bytes(), &address),
            Err(e) => Err(e),
        }
    } else {
        socket.send_to(message.as_bytes(), &path)
    };
}

/// The watchdog interval systemd asked for: `$WATCHDOG_USEC`, when `$WATCHDOG_PID` is
/// this process or absent (as libsystemd reads them).
fn watchdog_from_env() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

pub struct Stage {
    name: String,
    allowance: Duration,
    /// Milliseconds since `epoch` when the current work began, plus one; 0 = idle.
    busy_since: AtomicU64,
    epoch: Instant,
}

/// Marks a stage busy until dropped.
pub struct Busy<'a>(&'a Stage);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.busy_since.store(0, Ordering::Relaxed);
    }
}

impl Stage {
    pub fn busy(&self) -> Busy<'_> {
        let now = self.epoch.elapsed().as_millis() as u64 + 1;
        self.busy_since.store(now, Ordering::Relaxed);
        Busy(self)
    }

    /// How long it has been busy with the current piece of work, if it is busy.
    fn busy_for(&self) -> Option<Duration> {
        match self.busy_since.load(Ordering::Relaxed) {
            0 => None,
            since => {
                let now = self.epoch.elapsed().as_millis() as u64 + 1;
                Some(Duration::from_millis(now.saturating_sub(since)))
            }
        }
    }
}

/// The stages of one daemon.
pub struct Health {
    epoch: Instant,
    /// The watchdog interval systemd asked for (`WatchdogSec=`), or none.
    interval: Option<Duration>,
    stages: Mutex<Vec<Arc<Stage>>>,
}

impl Health {
    /// From the environment systemd gives the service (`WATCHDOG_USEC`).
    pub fn from_env() -> Self {
        Health {
            epoch: Instant::now(),
            interval: watchdog_from_env(),
            stages: Mutex::new(Vec::new()),
        }
    }

    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.interval
    }

    /// A stage that may be busy for `deadline` (its own longest piece of work) before it
    /// counts as hung; the watchdog interval is added as a margin.
    pub fn stage(&self, name: impl Into<String>, deadline: Duration) -> Arc<Stage> {
        let stage = Arc::new(Stage {
            name: name.into(),
            allowance: deadline + self.interval.unwrap_or(Duration::from_secs(30)),
            busy_since: AtomicU64::new(0),
            epoch: self.epoch,
        });
        self.stages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(stage.clone());
        stage
    }

    /// Forgets a stage (a source or uplink stopped by a reload).
    pub fn remove(&self, stage: &Arc<Stage>) {
        self.stages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|s| !Arc::ptr_eq(s, stage));
    }

    /// The first hung stage: its name and how long it has been busy.
    pub fn hung(&self) -> Option<(String, Duration)> {
        let stages = self.stages.lock().unwrap_or_else(|e| e.into_inner());
        stages.iter().find_map(|s| {
            s.busy_for()
                .filter(|busy| *busy > s.allowance)
                .map(|busy| (s.name.clone(), busy))
        })
    }
}

/// Pings the watchdog at half its interval while no stage is hung, and keeps `STATUS=`
/// up to date with `status()`. Logs once when a stage hangs and once when it recovers.
pub async fn run(
    health: Arc<Health>,
    status: impl Fn() -> String + Send + 'static,
    shutdown: CancellationToken,
) {
    let tick = health
        .interval
        .map(|i| i / 2)
        .unwrap_or(Duration::from_secs(5))
        .max(Duration::from_millis(100));
    let mut last_status = Instant::now() - Duration::from_secs(60);
    let mut hung_logged = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = shutdown.cancelled() => return,
        }
        match health.hung() {
            Some((stage, busy)) => {
                if !hung_logged {
                    log::error!(
                        "{stage} has been stuck for {} (longer than its deadline): \
                         the watchdog is no longer pinged, so systemd restarts tidegate",
                        humantime::format_duration(Duration::from_secs(busy.as_secs()))
                    );
                    hung_logged = true;
                }
                notify(&[&format!("STATUS=stuck: {stage}")]);
                continue;
            }
            None if hung_logged => {
                log::info!("every stage makes progress again; the watchdog is pinged again");
                hung_logged = false;
            }
            None => {}
        }
        if health.interval.is_some() {
            notify(&["WATCHDOG=1"]);
        }
        if last_status.elapsed() >= Duration::from_secs(5) {
            notify(&[&format!("STATUS={}", status())]);
            last_status = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stage_is_hung_only_while_busy_beyond_its_allowance() {
        let health = Health {
            epoch: Instant::now(),
            interval: Some(Duration::from_millis(50)),
            stages: Mutex::new(Vec::new()),
        };
        let stage = health.stage("uplink cloud", Duration::from_millis(50));
        assert!(health.hung().is_none(), "idle is not hung");
        let busy = stage.busy();
        std::thread::sleep(Duration::from_millis(20));
        assert!(health.hung().is_none(), "busy within its allowance");
        std::thread::sleep(Duration::from_millis(120));
        assert_eq!(health.hung().map(|h| h.0), Some("uplink cloud".to_string()));
        drop(busy);
        assert!(health.hung().is_none(), "done: no longer hung");
        health.remove(&stage);
        assert!(health.stages.lock().unwrap().is_empty());
    }
}
