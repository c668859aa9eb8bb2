//! Where each org calls from. The first time in an hour an org's token is used from an address,
//! the edge publishes `caller.seen`; attribution keeps the addresses, so the self-referral check
//! can tell a click made from the affiliate's own address.
//!
//! Only addresses that identify someone count: loopback, private, shared (CGNAT), link-local and
//! unspecified ones are where a proxy or a local network stands, shared by everyone behind it (an
//! edge behind a load balancer without `AMBA_TRUSTED_PROXIES` sees only those), so they are
//! never recorded.

use amba_bus::Namespace;
use async_nats::jetstream::message::PublishMessage;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often one org at one address is announced again.
const REPEAT: Duration = Duration::from_secs(3_600);
/// Sightings remembered at most (each a few dozen bytes); beyond, the oldest hour is forgotten.
const REMEMBERED: usize = 100_000;

pub struct CallerSightings {
    nats: async_nats::Client,
    ns: Namespace,
    seen: Mutex<HashMap<(String, IpAddr), Instant>>,
}

impl CallerSightings {
    pub fn new(nats: async_nats::Client, ns: Namespace) -> Self {
        CallerSightings {
            nats,
            ns,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Notes that `org_id` called from `address`; announces it when it is new this hour.
    pub fn record(&self, org_id: &str, address: IpAddr) {
        if !identifies(address) {
            return;
        }
        let key = (org_id.to_owned(), address);
        {
            let mut seen = self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if seen.get(&key).is_some_and(|at| at.elapsed() < REPEAT) {
                return;
            }
            if seen.len() >= REMEMBERED {
                seen.retain(|_, at| at.elapsed() < REPEAT);
            }
            if seen.len() >= REMEMBERED {
                return;
            }
            seen.insert(key, Instant::now());
        }
        let now = chrono::Utc::now();
        let event = amba_proto::wire::CallerSeen {
            meta: Some(amba_bus::events::new_meta()),
            org_id: org_id.to_owned(),
            address: address.to_string(),
            seen_at_micros: now.timestamp_micros(),
        };
        // Replicas seeing the same org at the same address in the same hour announce it once.
        let hour = now.timestamp() / 3_600;
        let id = hex::encode(Sha256::digest(format!("{org_id}|{address}|{hour}").as_bytes()));
        let subject = self.ns.event("caller", "seen");
        let js = async_nats::jetstream::new(self.nats.clone());
        tokio::spawn(async move {
            let message = PublishMessage::build()
                .payload(prost::Message::encode_to_vec(&event).into())
                .message_id(format!("caller:{id}"));
            let stored = match js.send_publish(subject, message).await {
                Ok(ack) => ack.await.map(drop).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            // Best effort: the next sighting after REPEAT announces it again.
            if let Err(error) = stored {
                tracing::debug!(%error, "a caller sighting was not published");
            }
        });
    }
}

/// Whether an address stands for one client rather than a network or a proxy.
pub fn identifies(address: IpAddr) -> bool {
    amba_core::address::reach(address) == amba_core::address::Reach::Public
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_addresses_of_one_client_identify() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        for public in ["198.51.100.23", "8.8.8.8", "2001:db8::7", "::ffff:203.0.113.9"] {
            assert!(identifies(ip(public)), "{public}");
        }
        for shared in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.9",
            "192.168.1.1",
            "100.64.0.1",
            "169.254.169.254",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!identifies(ip(shared)), "{shared}");
        }
    }
}
