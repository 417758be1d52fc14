//! A real DNS server for tests: answers A, AAAA and SRV queries over UDP on a free loopback
//! port from a zone the test changes while weir runs, counts the queries it gets, and can
//! be told to fail (SERVFAIL), to say a name does not exist (NXDOMAIN) or to keep silent.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

/// How the server answers every query for now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// From the zone (NXDOMAIN for names it does not have).
    Answer,
    /// SERVFAIL, as a broken resolver says it.
    Fail,
    /// NXDOMAIN for every name.
    NoSuchName,
    /// No answer at all (a server that is down or unreachable).
    Silent,
}

#[derive(Default)]
struct Zone {
    records: HashMap<(String, RecordType), Vec<(RData, u32)>>,
    /// Extra records sent in the additional section of SRV answers.
    glue: bool,
}

pub struct DnsServer {
    pub addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    mode: Arc<Mutex<Mode>>,
    queries: Arc<AtomicU64>,
    stop: CancellationToken,
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn key(name: &str, kind: RecordType) -> (String, RecordType) {
    (name.trim_end_matches('.').to_ascii_lowercase(), kind)
}

impl DnsServer {
    pub async fn start() -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let server = Self {
            addr,
            zone: Arc::default(),
            mode: Arc::new(Mutex::new(Mode::Answer)),
            queries: Arc::default(),
            stop: CancellationToken::new(),
        };
        let (zone, mode, queries, stop) = (
            Arc::clone(&server.zone),
            Arc::clone(&server.mode),
            Arc::clone(&server.queries),
            server.stop.clone(),
        );
        tokio::spawn(async move {
            let mut buffer = vec![0u8; 4096];
            loop {
                let (n, peer) = tokio::select! {
                    _ = stop.cancelled() => return,
                    received = socket.recv_from(&mut buffer) => match received {
                        Ok(r) => r,
                        Err(_) => continue,
                    },
                };
                let Ok(query) = Message::from_vec(&buffer[..n]) else {
                    continue;
                };
                queries.fetch_add(1, SeqCst);
                let mode = *mode.lock().unwrap();
                if mode == Mode::Silent {
                    continue;
                }
                let reply = answer(&query, &zone.lock().unwrap(), mode);
                if let Ok(bytes) = reply.to_vec() {
                    let _ = socket.send_to(&bytes, peer).await;
                }
            }
        });
        server
    }

    /// Sets the A and AAAA records of `name` (an empty list removes them).
    pub fn set_addresses(&self, name: &str, addresses: &[IpAddr], ttl: u32) {
        let mut zone = self.zone.lock().unwrap();
        let (v4, v6): (Vec<_>, Vec<_>) = addresses.iter().partition(|a| a.is_ipv4());
        let as_records = |list: Vec<&IpAddr>| -> Vec<(RData, u32)> {
            list.into_iter()
                .map(|ip| match ip {
                    IpAddr::V4(v4) => (RData::A(A(*v4)), ttl),
                    IpAddr::V6(v6) => (RData::AAAA(AAAA(*v6)), ttl),
                })
                .collect()
        };
        zone.records
            .insert(key(name, RecordType::A), as_records(v4));
        zone.records
            .insert(key(name, RecordType::AAAA), as_records(v6));
    }

    /// Sets the SRV records of `name`: (priority, weight, port, target).
    pub fn set_srv(&self, name: &str, records: &[(u16, u16, u16, &str)], ttl: u32) {
        let rdata = records
            .iter()
            .map(|(priority, weight, port, target)| {
                let target = Name::from_ascii(format!("{target}.")).unwrap();
                (RData::SRV(SRV::new(*priority, *weight, *port, target)), ttl)
            })
            .collect();
        self.zone
            .lock()
            .unwrap()
            .records
            .insert(key(name, RecordType::SRV), rdata);
    }

    /// Whether SRV answers carry their targets' addresses (as most servers do).
    pub fn set_glue(&self, glue: bool) {
        self.zone.lock().unwrap().glue = glue;
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    /// Queries received so far.
    pub fn queries(&self) -> u64 {
        self.queries.load(SeqCst)
    }
}

fn answer(query: &Message, zone: &Zone, mode: Mode) -> Message {
    let mut reply = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.metadata.authoritative = true;
    reply.add_queries(query.queries.iter().cloned());
    let Some(question) = query.queries.first() else {
        reply.metadata.response_code = ResponseCode::FormErr;
        return reply;
    };
    let name = question.name().to_ascii();
    let kind = question.query_type();
    match mode {
        Mode::Fail => {
            reply.metadata.response_code = ResponseCode::ServFail;
            return reply;
        }
        Mode::NoSuchName => {
            reply.metadata.response_code = ResponseCode::NXDomain;
            return reply;
        }
        Mode::Answer | Mode::Silent => {}
    }
    let known = [RecordType::A, RecordType::AAAA, RecordType::SRV]
        .iter()
        .any(|k| zone.records.contains_key(&key(&name, *k)));
    if !known {
        reply.metadata.response_code = ResponseCode::NXDomain;
        return reply;
    }
    for (rdata, ttl) in zone.records.get(&key(&name, kind)).into_iter().flatten() {
        reply.add_answer(Record::from_rdata(
            question.name().clone(),
            *ttl,
            rdata.clone(),
        ));
        if let (RData::SRV(srv), true) = (rdata, zone.glue) {
            let target = srv.target.to_ascii();
            for kind in [RecordType::A, RecordType::AAAA] {
                for (glue, ttl) in zone.records.get(&key(&target, kind)).into_iter().flatten() {
                    reply.add_additional(Record::from_rdata(
                        srv.target.clone(),
                        *ttl,
                        glue.clone(),
                    ));
                }
            }
        }
    }
    reply
}
