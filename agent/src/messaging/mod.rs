//! The messaging half of the sidecar: who a peer is ([`trust`]), what the peer directory says
//! of it, checked and cached ([`peers`]), sealing to it ([`send`]), whom the CA has revoked
//! ([`revocation`]), which messages were seen ([`replay`]) and the receiver's checks in their
//! fixed order ([`receive`]), delivery between sidecars over mutual TLS ([`deliver`]), one
//! device's messaging put together ([`node`]) and the workload's local API ([`workload`]).
//! The envelope itself is `vouch_envelope`'s.

pub mod deliver;
pub mod metrics;
pub mod mqtt;
pub mod node;
pub mod peers;
pub mod policy;
pub mod receipt;
pub mod receive;
pub mod replay;
pub mod revocation;
pub mod send;
pub mod sidecar;
pub mod spool;
pub mod trust;
pub mod window;
pub mod workload;
