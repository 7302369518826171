//! The MQTT source. One task owns the rumqttc event loop and never blocks on anything but
//! the bounded channel to the store writer. It also sends the PUBACKs, in the order the
//! writer commits, which is the order the messages arrived. A QoS 1 message is therefore
//! acknowledged to the broker only once its samples are in the store: if tidegate dies
//! in between, the broker (persistent session) delivers it again.
//!
//! The PUBACKs of one commit go out in one write: rumqttc, asked through its client,
//! sends each acknowledgement with a write of its own, a system call per message.
//!
//! Malformed payloads are counted per topic, logged rate-limited, and acknowledged (in
//! order) so the broker does not redeliver them forever; the connection stays up.
//!
//! When the store cannot keep up (or is full under the `block` policy), decoded messages
//! wait here while the event loop keeps running (keep-alives, the connection): QoS 1
//! messages simply stay unacknowledged, so the broker stops sending once its in-flight
//! window is full and holds the rest. QoS 0 messages, which the broker never holds, are
//! dropped past [`MAX_WAITING`] and counted.

pub mod decode;
mod flatten;
pub use flatten::Names;
pub mod topic;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, EventLoop, MqttOptions, Packet, PubAck, Publish, QoS,
    SubscribeFilter, SubscribeReasonCode, TlsConfiguration, Transport,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::MqttSourceConfig;
use crate::ops::Stats;
use crate::sample::now_ms;
use crate::store::writer::Ingest;
use crate::uplink::backoff::Backoff;

/// Largest packet accepted from the broker. Payloads above `max_payload` but below this
/// are counted and skipped; a larger packet breaks the connection (rumqttc refuses it),
/// so set the broker's `max_packet_size` at or below this.
pub const MAX_PACKET: usize = 16 << 20 | 64 << 10;

/// Decoded messages that may wait for room in the writer's channel. QoS 1 messages are
/// bounded by the broker's in-flight window anyway; this bounds QoS 0.
pub const MAX_WAITING: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum MqttSourceError {
    #[error("source {name}: TLS setup: {source}")]
    Tls {
        name: String,
        source: crate::tls::TlsError,
    },
}

/// Most PUBACKs written before one flush: a commit's worth at tens of thousands of
/// messages a second, and a bound on how long the event loop waits for them.
const MAX_ACKS_PER_WRITE: usize = 512;

/// After a read that emptied the socket, the next waits out a pace: the store's
/// `commit_spacing` (a commit waits that long anyway), at most this. What arrives
/// meanwhile is read, decoded and passed on together: at 2,000 msg/s in bursts every
/// 10 ms, a 20 ms pace took a sixth less of the daemon's CPU for ~13 ms more p99 latency
/// (BENCHMARKS.md, "Reading the broker in paces"). A quiet connection reads at once: the
/// pace only starts at a read. The bound keeps what waits in the socket meanwhile small
/// (QoS 0 messages the broker cannot hand over are its to drop).
pub const MAX_READ_PACE: Duration = Duration::from_millis(20);
/// Most packets rumqttc takes from the socket in one read (`Network::readb`): a read that
/// returns fewer emptied it. rumqttc is pinned to the version this was read from: were
/// its batch smaller, every read would look like one that emptied the socket, and each
/// would wait out a pace.
const READ_BATCH: usize = 9;

/// What acknowledging one message takes. Subscriptions are QoS 0 or 1, so the broker
/// delivers nothing at QoS 2 and an acknowledgement is always a PUBACK.
struct AckToken {
    pkid: u16,
    /// The connection that delivered the message (counted from 1). A packet id means
    /// something only on its own connection: see [`Acks::write`].
    connection: u64,
}

pub struct MqttSource {
    config: MqttSourceConfig,
    options: MqttOptions,
    read_pace: Duration,
}

impl MqttSource {
    /// `commit_spacing`: the store's; reads are paced by it (see [`MAX_READ_PACE`]).
    pub fn new(
        config: MqttSourceConfig,
        commit_spacing: Duration,
    ) -> Result<Self, MqttSourceError> {
        let mut options =
            MqttOptions::new(config.client_id.clone(), config.host.clone(), config.port);
        options
            .set_keep_alive(config.keep_alive)
            .set_clean_session(false)
            .set_manual_acks(true)
            .set_max_packet_size(MAX_PACKET, 1 << 20)
            .set_request_channel_capacity(usize::from(config.inflight).max(16) * 2)
            .set_inflight(config.inflight);
        if let (Some(user), Some(password)) = (&config.username, &config.password) {
            options.set_credentials(user.clone(), password.expose().to_string());
        } else if let Some(user) = &config.username {
            options.set_credentials(user.clone(), String::new());
        }
        if let Some(tls) = &config.tls {
            let client_config =
                crate::tls::client_config(tls).map_err(|source| MqttSourceError::Tls {
                    name: config.name.clone(),
                    source,
                })?;
            options.set_transport(Transport::Tls(TlsConfiguration::Rustls(client_config)));
        }
        Ok(MqttSource {
            config,
            options,
            read_pace: commit_spacing.min(MAX_READ_PACE),
        })
    }

    /// Runs until `shutdown`. Messages not yet committed at shutdown are not acknowledged,
    /// so the broker keeps them for the next start.
    pub async fn run(
        self,
        tx: mpsc::Sender<Ingest>,
        stats: Arc<Stats>,
        shutdown: CancellationToken,
    ) {
        let MqttSource {
            config,
            options,
            read_pace,
        } = self;
        let name = config.name.clone();
        let (client, mut eventloop) =
            AsyncClient::new(options, usize::from(config.inflight).max(16) * 2);
        let mut network = eventloop.network_options();
        network.set_connection_timeout(config.connect_timeout.as_secs().max(1));
        eventloop.set_network_options(network);

        let (ack_tx, ack_rx) = mpsc::unbounded_channel::<AckToken>();
        let mut acks = Acks {
            rx: ack_rx,
            deadline: config.connect_timeout.max(Duration::from_secs(1)),
            source: name.clone(),
        };

        let filters: Vec<SubscribeFilter> = config
            .subscriptions
            .iter()
            .map(|s| {
                SubscribeFilter::new(
                    s.filter.clone(),
                    if s.qos == 0 {
                        QoS::AtMostOnce
                    } else {
                        QoS::AtLeastOnce
                    },
                )
            })
            .collect();
        let mut backoff = Backoff::new(config.reconnect.min, config.reconnect.max);
        let mut connected = false;
        let mut failures_while_down = 0u64;
        let mut error_log = RateLimit::new(Duration::from_secs(30));
        let mut names = flatten::Names::default();
        let mut waiting: std::collections::VecDeque<Ingest> = std::collections::VecDeque::new();
        let mut held_back = false;
        // QoS 1 messages passed on and not yet acknowledged. The broker sends no more
        // than its window of them (`inflight` says how many) until a commit acknowledges
        // some: the message that fills the window is committed at once, not after
        // `commit_spacing`.
        let mut unacked: usize = 0;
        let mut connection: u64 = 0;
        // The next read from the socket waits until then (see MAX_READ_PACE).
        let mut read_after = tokio::time::Instant::now();
        // One wait for the whole run, on a token of this source's own: a fresh wait on the
        // shared token at every packet would take that token's lock, which every task
        // shares, thousands of times a second.
        let own_shutdown = shutdown.child_token();
        let cancelled = own_shutdown.cancelled();
        tokio::pin!(cancelled);

        loop {
            // Only while connected: taking this branch drops the pending `poll`, which
            // must not happen to a connection attempt half made.
            let can_ack = eventloop.network.is_some();
            let will_read = eventloop.state.events.is_empty();
            let pacing = will_read && read_after > tokio::time::Instant::now();
            let event = tokio::select! {
                biased;
                Some(first) = acks.rx.recv(), if can_ack => {
                    let window_was_full = unacked >= usize::from(config.inflight);
                    let sent = acks.write(&mut eventloop, connection, first).await;
                    unacked = unacked.saturating_sub(sent);
                    // The broker sends the next window only now: reading it must not wait
                    // out a pace, or one connection would carry a window per pace.
                    if window_was_full {
                        read_after = tokio::time::Instant::now();
                    }
                    continue;
                }
                permit = tx.reserve(), if !waiting.is_empty() => {
                    match permit {
                        Ok(permit) => permit.send(waiting.pop_front().expect("not empty")),
                        Err(_) => break,
                    }
                    if waiting.is_empty() && held_back {
                        log::info!("source {name}: the store takes messages again");
                        held_back = false;
                    }
                    continue;
                }
                _ = &mut cancelled => break,
                _ = tokio::time::sleep_until(read_after), if pacing => continue,
                event = eventloop.poll(), if !pacing => event,
            };
            // A read that emptied the socket starts a pace; one that filled its batch did
            // not, and the next read goes at once.
            if will_read
                && matches!(event, Ok(Event::Incoming(Packet::Publish(_))))
                && eventloop.state.events.len() + 1 < READ_BATCH
            {
                read_after = tokio::time::Instant::now() + read_pace;
            }
            match event {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    if ack.code != ConnectReturnCode::Success {
                        log::error!(
                            "source {name}: broker refused the connection: {:?}",
                            ack.code
                        );
                        continue;
                    }
                    log::info!(
                        "source {name}: connected to {}:{} (session {})",
                        config.host,
                        config.port,
                        if ack.session_present {
                            "resumed"
                        } else {
                            "new"
                        }
                    );
                    connected = true;
                    connection += 1;
                    // The window of a new connection starts empty.
                    unacked = 0;
                    failures_while_down = 0;
                    backoff.reset();
                    // Subscribing through the request channel from this task could wait on
                    // the very loop it would block; hand it to a task of its own.
                    let client = client.clone();
                    let filters = filters.clone();
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(
                            Duration::from_secs(10),
                            client.subscribe_many(filters),
                        )
                        .await;
                    });
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    for (code, filter) in ack.return_codes.iter().zip(&config.subscriptions) {
                        if matches!(code, SubscribeReasonCode::Failure) {
                            log::error!(
                                "source {name}: broker refused the subscription to {}",
                                filter.filter
                            );
                        } else {
                            log::info!("source {name}: subscribed to {}", filter.filter);
                        }
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    if waiting.len() >= MAX_WAITING && publish.qos == QoS::AtMostOnce {
                        Stats::add(&stats.messages_in, 1);
                        Stats::add(&stats.dropped_qos0, 1);
                        continue;
                    }
                    let mut ingest = handle_publish(
                        &config,
                        publish,
                        connection,
                        &ack_tx,
                        &stats,
                        &mut error_log,
                        &mut names,
                    );
                    // QoS 1: acknowledged once committed.
                    if ingest.on_commit.is_some() {
                        unacked += 1;
                        // Only the message that fills it: a broker that lets more through
                        // would otherwise make every further message a commit of its own.
                        ingest.commit_now = unacked == usize::from(config.inflight);
                    }
                    if waiting.is_empty() {
                        match tx.try_send(ingest) {
                            Ok(()) => continue,
                            Err(mpsc::error::TrySendError::Closed(_)) => break,
                            Err(mpsc::error::TrySendError::Full(ingest)) => {
                                waiting.push_back(ingest)
                            }
                        }
                    } else {
                        waiting.push_back(ingest);
                    }
                    if !held_back && waiting.len() >= usize::from(config.inflight) {
                        log::warn!(
                            "source {name}: the store is not taking messages (full, or slow disk); \
                             holding {} and leaving them unacknowledged, so the broker keeps the rest",
                            waiting.len()
                        );
                        held_back = true;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    failures_while_down += 1;
                    if connected {
                        log::warn!(
                            "source {name}: connection lost: {e}; reconnecting with back-off"
                        );
                        connected = false;
                    } else if failures_while_down == 1 || failures_while_down.is_power_of_two() {
                        // A refused login or a TLS failure will not fix itself: a person
                        // must act, so it is an ERROR; an absent broker is a WARN.
                        let needs_a_person = matches!(
                            e,
                            rumqttc::ConnectionError::ConnectionRefused(_)
                                | rumqttc::ConnectionError::Tls(_)
                        );
                        let level = if needs_a_person {
                            log::Level::Error
                        } else {
                            log::Level::Warn
                        };
                        log::log!(
                            level,
                            "source {name}: cannot connect to {}:{} ({e}); attempt {failures_while_down}, retrying with back-off",
                            config.host,
                            config.port
                        );
                    }
                    let delay = backoff.next_delay();
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = &mut cancelled => break,
                    }
                }
            }
        }

        // Drop our sender: once the writer has committed what it holds, the ack channel
        // closes. Keep polling meanwhile so the last PUBACKs reach the broker.
        drop(tx);
        drop(ack_tx);
        let deadline = tokio::time::sleep(Duration::from_secs(3));
        tokio::pin!(deadline);
        if connected {
            loop {
                let can_ack = eventloop.network.is_some();
                tokio::select! {
                    biased;
                    token = acks.rx.recv(), if can_ack => match token {
                        Some(first) => {
                            acks.write(&mut eventloop, connection, first).await;
                        }
                        None => break,
                    },
                    _ = &mut deadline => break,
                    event = eventloop.poll() => if event.is_err() { break },
                }
            }
            let _ = client.try_disconnect();
            let flush = tokio::time::timeout(Duration::from_millis(500), async {
                while let Ok(event) = eventloop.poll().await {
                    if matches!(event, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                        break;
                    }
                }
            });
            let _ = flush.await;
        }
        log::info!("source {name}: stopped");
    }
}

/// Decodes one message into what the writer commits (and then acknowledges).
fn handle_publish(
    config: &MqttSourceConfig,
    publish: Publish,
    connection: u64,
    ack_tx: &mpsc::UnboundedSender<AckToken>,
    stats: &Stats,
    error_log: &mut RateLimit,
    names: &mut flatten::Names,
) -> Ingest {
    Stats::add(&stats.messages_in, 1);
    let topic = publish.topic.clone();
    let sub = config
        .subscriptions
        .iter()
        .find(|s| topic_matches(&s.filter, &topic))
        .or(config.subscriptions.first());
    let samples = match sub {
        Some(sub) => decode::decode(
            &config.name,
            &topic,
            &publish.payload,
            now_ms(),
            sub,
            config.max_payload,
            names,
        ),
        None => Ok(Vec::new()),
    };
    let samples = match samples {
        Ok(samples) => samples,
        Err(e) => {
            stats.decode_error(&topic);
            if let Some(suppressed) = error_log.allow() {
                log::warn!(
                    "source {}: skipped a malformed message on {topic}: {e}{}",
                    config.name,
                    if suppressed > 0 {
                        format!(" ({suppressed} more since the last report)")
                    } else {
                        String::new()
                    }
                );
            }
            Vec::new()
        }
    };
    Stats::add(&stats.samples_in, samples.len() as u64);
    let on_commit: Option<crate::store::writer::OnCommit> = if publish.qos == QoS::AtMostOnce {
        None
    } else {
        let token = AckToken {
            pkid: publish.pkid,
            connection,
        };
        let ack_tx = ack_tx.clone();
        Some(Box::new(move || {
            let _ = ack_tx.send(token);
        }))
    };
    // Even a skipped message goes through the writer: its PUBACK must keep its place in
    // the receive order.
    Ingest {
        samples,
        on_commit,
        commit_now: false,
    }
}

/// The acknowledgements of committed messages, as the writer hands them back.
struct Acks {
    rx: mpsc::UnboundedReceiver<AckToken>,
    /// For one write of PUBACKs and its flush.
    deadline: Duration,
    source: String,
}

impl Acks {
    /// Writes `first` and every PUBACK already waiting behind it (up to
    /// [`MAX_ACKS_PER_WRITE`] taken from the channel), in commit order, then flushes once.
    /// A write that fails or does not finish in time drops the connection: the next `poll`
    /// connects again and the broker delivers what was left unacknowledged (the session is
    /// persistent). Returns how many PUBACKs it wrote.
    ///
    /// Messages of an earlier connection are not acknowledged on this one: the broker has
    /// delivered them again on it under the same packet ids, and those copies are
    /// acknowledged after their own commit. Acknowledging both would answer, with the
    /// second PUBACK, whatever the broker had sent under that packet id in between,
    /// before it was stored.
    async fn write(
        &mut self,
        eventloop: &mut EventLoop,
        connection: u64,
        first: AckToken,
    ) -> usize {
        let (rx, deadline, name) = (&mut self.rx, self.deadline, &self.source);
        let Some(network) = eventloop.network.as_mut() else {
            return 0;
        };
        let (mut taken, mut written) = (1, 0);
        let mut next = Some(first);
        let result = tokio::time::timeout(deadline, async {
            while let Some(token) = next.take() {
                if token.connection == connection {
                    network
                        .write(Packet::PubAck(PubAck::new(token.pkid)))
                        .await?;
                    written += 1;
                }
                if taken < MAX_ACKS_PER_WRITE {
                    next = rx.try_recv().ok();
                    taken += usize::from(next.is_some());
                }
            }
            if written > 0 {
                network.flush().await?;
            }
            Ok::<(), rumqttc::StateError>(())
        })
        .await;
        let failure = match result {
            Ok(Ok(())) => return written,
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no progress in {deadline:?}"),
        };
        log::warn!(
            "source {name}: cannot send acknowledgements ({failure}); reconnecting, the broker \
         will deliver the unacknowledged messages again"
        );
        eventloop.clean();
        written
    }
}

/// MQTT topic filter matching (`+` one level, `#` the rest).
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    let mut topic_levels = topic.split('/');
    for level in filter.split('/') {
        match level {
            "#" => return true,
            "+" => {
                if topic_levels.next().is_none() {
                    return false;
                }
            }
            literal => {
                if topic_levels.next() != Some(literal) {
                    return false;
                }
            }
        }
    }
    topic_levels.next().is_none()
}

/// At most one log line per period; reports how many were suppressed in between.
pub struct RateLimit {
    period: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimit {
    pub fn new(period: Duration) -> Self {
        RateLimit {
            period,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(suppressed since last time)` when a line may be logged now.
    pub fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        match self.last {
            Some(last) if now.duration_since(last) < self.period => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_like_the_broker() {
        assert!(topic_matches("plant/+/+/telemetry", "plant/a/b/telemetry"));
        assert!(!topic_matches("plant/+/+/telemetry", "plant/a/telemetry"));
        assert!(topic_matches("plant/#", "plant/a/b"));
        assert!(topic_matches("#", "x"));
        assert!(!topic_matches("a/b", "a/b/c"));
    }

    #[test]
    fn rate_limit_counts_what_it_suppresses() {
        let mut limit = RateLimit::new(Duration::from_secs(3600));
        assert_eq!(limit.allow(), Some(0));
        assert_eq!(limit.allow(), None);
        assert_eq!(limit.allow(), None);
        limit.last = Some(Instant::now() - Duration::from_secs(7200));
        assert_eq!(limit.allow(), Some(2));
    }
}
