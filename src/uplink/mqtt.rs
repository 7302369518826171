//! The MQTT uplink: each record is published at QoS 1 to a topic of its own (a cloud
//! broker: AWS IoT Core, Azure IoT Hub, an EMQX or HiveMQ cluster), and a batch counts as
//! delivered only once every one of its records has its PUBACK.
//!
//! rumqttc's `publish()` returns no packet id, so a PUBACK cannot be tied to a message
//! from the call alone. It can from the event loop: rumqttc takes publish requests from
//! one channel in order and reports `Outgoing::Publish(pkid)` as it writes each one, so
//! the n-th such event of a connection is the n-th record published on it. Each record's
//! PUBACK is then matched by packet id (a packet id is reused only after its PUBACK), so
//! attribution holds even if a broker acknowledges out of order.
//!
//! Every connection is a fresh client and event loop with a clean session: nothing of an
//! earlier connection (queued requests, unacknowledged publishes) is replayed behind our
//! back. When a connection fails mid-batch, the batch is published again on the next one
//! — duplicates, never a loss; each message carries `gateway` and `seq` for
//! deduplication. The store, not rumqttc, carries durability.

use std::collections::HashMap;
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, MqttOptions, Outgoing, Packet, QoS,
    TlsConfiguration, Transport,
};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{Delivery, Sink};
use crate::config::MqttUplinkConfig;
use crate::sample::Record;

#[derive(Debug, thiserror::Error)]
pub enum MqttSinkError {
    #[error("TLS setup: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// What the event loop reports to the sink.
#[derive(Debug)]
enum Report {
    Connected,
    Sent(u16),
    Acked(u16),
    /// The connection is gone (or never came up). `needs_a_person`: refused login, TLS.
    Lost {
        reason: String,
        needs_a_person: bool,
    },
}

struct Connection {
    client: AsyncClient,
    reports: mpsc::UnboundedReceiver<Report>,
    driver: JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

pub struct MqttSink {
    name: String,
    gateway: String,
    config: MqttUplinkConfig,
    options: MqttOptions,
    connection: Option<Connection>,
}

/// Flattening a record needs it decoded: this sink takes the default
/// [`RecordForm::Sample`].
#[derive(Serialize)]
struct Message<'a> {
    gateway: &'a str,
    #[serde(flatten)]
    record: &'a Record,
}

/// A topic level cannot hold the wildcards; an empty one would change the topic's shape.
fn topic_level(text: &str) -> String {
    if text.is_empty() {
        return "_".into();
    }
    text.replace(['+', '#'], "_")
}

pub fn topic_for(template: &str, gateway: &str, record: &Record) -> String {
    let sample = record.sample();
    template
        .replace("{gateway}", &topic_level(gateway))
        .replace("{source}", &topic_level(&sample.source))
        .replace("{device}", &topic_level(&sample.device))
}

/// The reason, and whether it needs a person (a refused login, a certificate problem)
/// rather than patience.
fn describe(e: &ConnectionError) -> (String, bool) {
    match e {
        ConnectionError::ConnectionRefused(code) => {
            (format!("broker refused the connection: {code:?}"), true)
        }
        ConnectionError::Tls(e) => (format!("TLS: {e}"), true),
        other => {
            let text = other.to_string();
            // A TLS alert from the broker (a client certificate it wants, or does not
            // accept) surfaces as an I/O error inside the MQTT state.
            let lower = text.to_lowercase();
            let tls = lower.contains("certificate") || lower.contains("alert");
            if tls {
                (format!("TLS: {text}"), true)
            } else {
                (text, false)
            }
        }
    }
}

impl MqttSink {
    pub fn new(
        name: &str,
        gateway: &str,
        config: &MqttUplinkConfig,
    ) -> Result<Self, MqttSinkError> {
        let mut options =
            MqttOptions::new(config.client_id.clone(), config.host.clone(), config.port);
        options
            .set_keep_alive(config.keep_alive)
            .set_clean_session(true)
            .set_inflight(config.inflight)
            .set_max_packet_size(1 << 20, 16 << 20);
        if let Some(user) = &config.username {
            let password = config
                .password
                .as_ref()
                .map(|p| p.expose().to_string())
                .unwrap_or_default();
            options.set_credentials(user.clone(), password);
        }
        if let Some(tls) = &config.tls {
            crate::tls::install_crypto_provider();
            let client_config = crate::tls::client_config(tls)?;
            options.set_transport(Transport::Tls(TlsConfiguration::Rustls(client_config)));
        }
        Ok(MqttSink {
            name: name.to_string(),
            gateway: gateway.to_string(),
            config: config.clone(),
            options,
            connection: None,
        })
    }

    /// A live connection, or why there is none.
    async fn connect(&mut self) -> Result<&mut Connection, Delivery> {
        if let Some(connection) = &mut self.connection {
            // Reports from an idle connection: only a loss matters.
            while let Ok(report) = connection.reports.try_recv() {
                if let Report::Lost { .. } = report {
                    self.connection = None;
                    break;
                }
            }
        }
        if self.connection.is_none() {
            let capacity = usize::from(self.config.inflight) * 2 + 16;
            let (client, mut eventloop) = AsyncClient::new(self.options.clone(), capacity);
            let mut network = eventloop.network_options();
            network.set_connection_timeout(self.config.connect_timeout.as_secs().max(1));
            eventloop.set_network_options(network);
            let (tx, mut reports) = mpsc::unbounded_channel();
            let driver = tokio::spawn(async move {
                loop {
                    let report = match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                            if ack.code == ConnectReturnCode::Success {
                                Report::Connected
                            } else {
                                let _ = tx.send(Report::Lost {
                                    reason: format!(
                                        "broker refused the connection: {:?}",
                                        ack.code
                                    ),
                                    needs_a_person: true,
                                });
                                return;
                            }
                        }
                        Ok(Event::Outgoing(Outgoing::Publish(pkid))) => Report::Sent(pkid),
                        Ok(Event::Incoming(Packet::PubAck(ack))) => Report::Acked(ack.pkid),
                        Ok(_) => continue,
                        Err(e) => {
                            let (reason, needs_a_person) = describe(&e);
                            let _ = tx.send(Report::Lost {
                                reason,
                                needs_a_person,
                            });
                            return;
                        }
                    };
                    if tx.send(report).is_err() {
                        return;
                    }
                }
            });
            let deadline = self.config.connect_timeout + Duration::from_secs(1);
            match tokio::time::timeout(deadline, reports.recv()).await {
                Ok(Some(Report::Connected)) => {
                    log::info!(
                        "uplink {}: connected to {}:{} as {}",
                        self.name,
                        self.config.host,
                        self.config.port,
                        self.config.client_id
                    );
                    self.connection = Some(Connection {
                        client,
                        reports,
                        driver,
                    });
                }
                Ok(Some(Report::Lost {
                    reason,
                    needs_a_person,
                })) => {
                    driver.abort();
                    let reason = format!(
                        "cannot connect to {}:{}: {reason}",
                        self.config.host, self.config.port
                    );
                    return Err(if needs_a_person {
                        Delivery::Refused { reason }
                    } else {
                        Delivery::Retry {
                            reason,
                            after: None,
                        }
                    });
                }
                _ => {
                    driver.abort();
                    return Err(Delivery::Retry {
                        reason: format!(
                            "cannot connect to {}:{} within {:?}",
                            self.config.host, self.config.port, deadline
                        ),
                        after: None,
                    });
                }
            }
        }
        Ok(self.connection.as_mut().expect("connected"))
    }

    async fn publish_all(&mut self, records: &[Record]) -> Delivery {
        let gateway = self.gateway.clone();
        let template = self.config.topic.clone();
        let deadline = self.config.timeout;
        let connection = match self.connect().await {
            Ok(connection) => connection,
            Err(outcome) => return outcome,
        };
        // Publishing and collecting reports run together: with more records than the
        // request channel holds, publishing waits for PUBACKs to make room.
        let client = connection.client.clone();
        let publishing = async {
            for record in records {
                let payload = serde_json::to_vec(&Message {
                    gateway: &gateway,
                    record,
                })
                .expect("records serialise to JSON");
                let topic = topic_for(&template, &gateway, record);
                if client
                    .publish(topic, QoS::AtLeastOnce, false, payload)
                    .await
                    .is_err()
                {
                    return false;
                }
            }
            true
        };
        let reports = &mut connection.reports;
        let collecting = async {
            // Packet id in flight → index of its record.
            let mut in_flight: HashMap<u16, usize> = HashMap::new();
            let (mut sent, mut acked) = (0usize, 0usize);
            while acked < records.len() {
                match reports.recv().await {
                    Some(Report::Sent(pkid)) => {
                        in_flight.insert(pkid, sent);
                        sent += 1;
                    }
                    Some(Report::Acked(pkid)) => {
                        if in_flight.remove(&pkid).is_some() {
                            acked += 1;
                        }
                    }
                    Some(Report::Connected) => {}
                    Some(Report::Lost { reason, .. }) => return Err((reason, acked)),
                    None => return Err(("the connection task ended".into(), acked)),
                }
            }
            Ok(())
        };
        let both = async {
            let (published, collected) = tokio::join!(publishing, collecting);
            (published, collected)
        };
        let outcome = match tokio::time::timeout(deadline, both).await {
            Ok((_, Ok(()))) => return Delivery::Delivered,
            Ok((_, Err((reason, acked)))) => format!(
                "connection lost after {acked} of {} PUBACKs: {reason}",
                records.len()
            ),
            Err(_) => format!(
                "not every PUBACK of {} records came within {deadline:?}",
                records.len(),
            ),
        };
        // Whatever this connection still holds is not ours to trust: start clean.
        self.connection = None;
        Delivery::Retry {
            reason: outcome,
            after: None,
        }
    }
}

impl Sink for MqttSink {
    async fn send(&mut self, records: &[Record]) -> Delivery {
        self.publish_all(records).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::Sample;

    #[test]
    fn topics_fill_their_placeholders_and_never_hold_wildcards() {
        let record = Record::new(1, Sample::new("line+1", "pump#7", 0));
        assert_eq!(
            topic_for(
                "plants/{gateway}/{source}/{device}/telemetry",
                "gw-1",
                &record
            ),
            "plants/gw-1/line_1/pump_7/telemetry"
        );
        let unnamed = Record::new(1, Sample::new("s", "", 0));
        assert_eq!(topic_for("t/{device}", "g", &unnamed), "t/_");
    }
}
