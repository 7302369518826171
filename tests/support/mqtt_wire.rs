//! A TCP proxy between an MQTT client and the broker that reads the packets going each
//! way, so a test can check what was acknowledged on which connection, and can drop every
//! connection at once, like a network outage.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One QoS 1 packet seen on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// The broker delivered a PUBLISH with this packet id.
    Publish { pkid: u16, dup: bool },
    /// The client acknowledged this packet id.
    PubAck { pkid: u16 },
}

pub struct MqttWire {
    pub port: u16,
    /// Every packet seen, in order, with the number of the connection (from 1) it was on.
    pub seen: Arc<Mutex<Vec<(u32, Seen)>>>,
    cut: Arc<tokio::sync::Notify>,
}

impl MqttWire {
    pub async fn start(broker_port: u16) -> MqttWire {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let broker: SocketAddr = ([127, 0, 0, 1], broker_port).into();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let cut = Arc::new(tokio::sync::Notify::new());
        let (seen2, cut2) = (seen.clone(), cut.clone());
        tokio::spawn(async move {
            let mut connection = 0u32;
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let Ok(upstream) = tokio::net::TcpStream::connect(broker).await else {
                    continue;
                };
                connection += 1;
                let (seen, cut) = (seen2.clone(), cut2.clone());
                tokio::spawn(async move {
                    let (client_read, client_write) = client.into_split();
                    let (broker_read, broker_write) = upstream.into_split();
                    tokio::select! {
                        _ = relay(client_read, broker_write, connection, seen.clone()) => {}
                        _ = relay(broker_read, client_write, connection, seen) => {}
                        _ = cut.notified() => {}
                    }
                });
            }
        });
        MqttWire { port, seen, cut }
    }

    /// Drops every open connection, both ways.
    pub fn cut_all(&self) {
        self.cut.notify_waiters();
    }

    pub fn seen(&self) -> Vec<(u32, Seen)> {
        self.seen.lock().unwrap().clone()
    }
}

/// Copies one direction, noting each QoS 1 PUBLISH and PUBACK as a whole packet passes.
async fn relay(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    connection: u32,
    seen: Arc<Mutex<Vec<(u32, Seen)>>>,
) {
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        while let Some((packet, len)) = next_packet(&pending) {
            if let Some(packet) = packet {
                seen.lock().unwrap().push((connection, packet));
            }
            pending.drain(..len);
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// The first whole packet of `bytes`: what it was (if a QoS 1 PUBLISH or a PUBACK) and
/// its length; `None` while it is incomplete.
fn next_packet(bytes: &[u8]) -> Option<(Option<Seen>, usize)> {
    let first = *bytes.first()?;
    let (mut remaining, mut shift, mut header) = (0usize, 0, 1);
    loop {
        let byte = *bytes.get(header)?;
        remaining |= usize::from(byte & 0x7f) << shift;
        header += 1;
        if byte & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    let total = header + remaining;
    let body = bytes.get(header..total)?;
    let pkid_at = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
    let packet = match first >> 4 {
        3 if (first >> 1) & 0b11 == 1 => {
            let topic_len = usize::from(pkid_at(0));
            Some(Seen::Publish {
                pkid: pkid_at(2 + topic_len),
                dup: first & 0b1000 != 0,
            })
        }
        4 => Some(Seen::PubAck { pkid: pkid_at(0) }),
        _ => None,
    };
    Some((packet, total))
}
