//! Peers as the sender knows them: the server's peer directory answer, checked (both
//! certificates chain through this fleet's issuing CA, name the device asked for, and have
//! their roles' key usages), then cached until the certificates expire, so the server is not
//! asked per message.

use super::trust::{TrustAnchors, TrustError, VerifiedDevice, VerifiedKeyAgreement};
use std::collections::HashMap;
use std::sync::Mutex;
use vouch_policy::model::DeviceFacts;
use vouch_proto::peer::PeerRecord;

/// Most peers cached; when full the cache is emptied (they are fetched again).
pub const MAX_CACHED_PEERS: usize = 10_000;

/// A peer whose directory entry checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its device certificate.
    pub device: VerifiedDevice,
    /// Its key-agreement certificate.
    pub key_agreement: VerifiedKeyAgreement,
    /// The key-agreement certificate, DER.
    pub key_agreement_der: Vec<u8>,
    /// Its zone.
    pub zone: String,
    /// Where it takes deliveries.
    pub endpoints: Vec<String>,
    /// What policy sees of it (zone, trust, status), as the directory said.
    pub facts: DeviceFacts,
    /// When the directory said it, Unix seconds.
    pub fetched_at: i64,
    /// The holder's count of trust changes (new CRLs) when it was fetched: facts from
    /// before the latest change are asked again.
    pub generation: u64,
    /// The directory's answer, as received (kept to be saved and checked again on load).
    pub record: std::sync::Arc<PeerRecord>,
}

impl Peer {
    /// When either certificate expires, Unix seconds.
    pub fn expires_at(&self) -> i64 {
        self.device.not_after.min(self.key_agreement.not_after)
    }
}

/// Checks a directory answer for `device_id` at `now`.
pub fn verify_peer_record(
    anchors: &TrustAnchors,
    record: &PeerRecord,
    device_id: &str,
    now: i64,
) -> Result<Peer, TrustError> {
    let first = |pem_text: &str| {
        crate::credentials::certificates(pem_text)
            .into_iter()
            .next()
            .ok_or_else(|| TrustError::Malformed("no certificate in the answer".into()))
    };
    let device_der = first(&record.certificate_pem)?;
    let ka_der = first(&record.key_agreement_certificate_pem)?;
    let device = anchors.verify_device(&device_der, now)?;
    if device.device_id != device_id || device.spiffe_id != record.spiffe_id {
        return Err(TrustError::NotADevice(anchors.trust_domain().to_owned()));
    }
    let key_agreement = anchors.verify_key_agreement(&ka_der, &device, now)?;
    Ok(Peer {
        device,
        key_agreement,
        key_agreement_der: ka_der,
        zone: record.zone.clone(),
        endpoints: record.endpoints.clone(),
        facts: record.facts.clone(),
        fetched_at: now,
        generation: 0,
        record: std::sync::Arc::new(record.clone()),
    })
}

/// Checked peers by device id, kept until their certificates expire.
#[derive(Debug, Default)]
pub struct PeerCache {
    peers: Mutex<HashMap<String, Peer>>,
}

impl PeerCache {
    /// The cached peer `device_id`, if its certificates are still valid at `now`.
    pub fn get(&self, device_id: &str, now: i64) -> Option<Peer> {
        let peers = self.peers.lock().ok()?;
        peers
            .get(device_id)
            .filter(|p| now < p.expires_at())
            .cloned()
    }

    /// Caches `peer`.
    pub fn insert(&self, peer: Peer) {
        if let Ok(mut peers) = self.peers.lock() {
            if peers.len() >= MAX_CACHED_PEERS {
                peers.clear();
            }
            peers.insert(peer.device.device_id.clone(), peer);
        }
    }

    /// Every cached peer.
    pub fn all(&self) -> Vec<Peer> {
        self.peers
            .lock()
            .map(|p| p.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Forgets every peer `listed` says (e.g. revoked or held) and returns them.
    pub fn forget_where(&self, listed: impl Fn(&Peer) -> bool) -> Vec<Peer> {
        let Ok(mut peers) = self.peers.lock() else {
            return Vec::new();
        };
        let gone: Vec<String> = peers
            .values()
            .filter(|p| listed(p))
            .map(|p| p.device.device_id.clone())
            .collect();
        gone.iter().filter_map(|id| peers.remove(id)).collect()
    }

    /// Forgets `device_id` (e.g. revoked).
    pub fn forget(&self, device_id: &str) {
        if let Ok(mut peers) = self.peers.lock() {
            peers.remove(device_id);
        }
    }
}
