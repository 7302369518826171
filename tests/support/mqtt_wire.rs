//! A TCP proxy between an MQTT client and the broker that reads the packets going each
//! way, so a test can check what was acknowledged on which connection, and can drop every
//! connection at once, like a network outage, or in the middle of the client's
//! acknowledgements.

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
    /// See [`MqttWire::cut_after_pubacks`].
    puback_cut: Arc<Mutex<PubackCut>>,
}

/// A cut of the client's direction, counted in PUBACKs.
#[derive(Default)]
struct PubackCut {
    /// PUBACKs still let through before the connection is dropped, once armed.
    before: Option<usize>,
    /// Once cut: how many PUBACKs of the read the cut fell in went through before it.
    passed_in_the_cut_read: Option<usize>,
}

impl MqttWire {
    pub async fn start(broker_port: u16) -> MqttWire {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let broker: SocketAddr = ([127, 0, 0, 1], broker_port).into();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let cut = Arc::new(tokio::sync::Notify::new());
        let puback_cut = Arc::new(Mutex::new(PubackCut::default()));
        let (seen2, cut2, armed2) = (seen.clone(), cut.clone(), puback_cut.clone());
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
                let (seen, cut, armed) = (seen2.clone(), cut2.clone(), armed2.clone());
                tokio::spawn(async move {
                    let (client_read, client_write) = client.into_split();
                    let (broker_read, broker_write) = upstream.into_split();
                    let upstream = Relay {
                        connection,
                        seen: seen.clone(),
                        puback_cut: Some(armed),
                    };
                    let downstream = Relay {
                        connection,
                        seen,
                        puback_cut: None,
                    };
                    tokio::select! {
                        _ = upstream.run(client_read, broker_write) => {}
                        _ = downstream.run(broker_read, client_write) => {}
                        _ = cut.notified() => {}
                    }
                });
            }
        });
        MqttWire {
            port,
            seen,
            cut,
            puback_cut,
        }
    }

    /// Lets `count` more PUBACKs through to the broker, then drops the connection that
    /// carries the next one, at the byte where it starts: the broker gets the first
    /// `count` of a write of several and never the rest.
    pub fn cut_after_pubacks(&self, count: usize) {
        *self.puback_cut.lock().unwrap() = PubackCut {
            before: Some(count),
            passed_in_the_cut_read: None,
        };
    }

    /// After a [`cut_after_pubacks`](Self::cut_after_pubacks) has happened: how many
    /// PUBACKs went through from the read it fell in (more than 0: it cut a write of
    /// several in the middle, as far as one read shows a write).
    pub fn pubacks_through_in_the_cut_read(&self) -> Option<usize> {
        self.puback_cut.lock().unwrap().passed_in_the_cut_read
    }

    /// Drops every open connection, both ways.
    pub fn cut_all(&self) {
        self.cut.notify_waiters();
    }

    pub fn seen(&self) -> Vec<(u32, Seen)> {
        self.seen.lock().unwrap().clone()
    }
}

/// One direction of one connection.
struct Relay {
    connection: u32,
    seen: Arc<Mutex<Vec<(u32, Seen)>>>,
    /// The client's direction: see [`MqttWire::cut_after_pubacks`].
    puback_cut: Option<Arc<Mutex<PubackCut>>>,
}

impl Relay {
    /// Copies `from` to `to`, noting each QoS 1 PUBLISH and PUBACK as a whole packet
    /// passes. Returns when either side closes, or at an armed cut.
    async fn run(
        self,
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
    ) {
        let mut pending: Vec<u8> = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            // Bytes of earlier reads at the front of `pending`, already passed on.
            let carried = pending.len();
            pending.extend_from_slice(&buf[..n]);
            let mut at = 0;
            let mut cut_at = None;
            let mut pubacks_in_read = 0;
            while let Some((packet, len)) = next_packet(&pending[at..]) {
                if matches!(packet, Some(Seen::PubAck { .. })) {
                    if self.cut_here(pubacks_in_read) {
                        cut_at = Some(at);
                        break;
                    }
                    pubacks_in_read += 1;
                }
                if let Some(packet) = packet {
                    self.seen.lock().unwrap().push((self.connection, packet));
                }
                at += len;
            }
            if let Some(cut_at) = cut_at {
                // A PUBACK that began in an earlier read has its first bytes through
                // already: the broker drops that part with the connection.
                let _ = to.write_all(&buf[..cut_at.saturating_sub(carried)]).await;
                return;
            }
            pending.drain(..at);
            if to.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    }

    /// Counts one PUBACK down: true when it is the one the cut comes before (and
    /// `passed_in_read` went through before it in the same read).
    fn cut_here(&self, passed_in_read: usize) -> bool {
        let Some(cut) = &self.puback_cut else {
            return false;
        };
        let mut cut = cut.lock().unwrap();
        match cut.before {
            Some(0) => {
                cut.before = None;
                cut.passed_in_the_cut_read = Some(passed_in_read);
                true
            }
            Some(ref mut left) => {
                *left -= 1;
                false
            }
            None => false,
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
