//! The messaging half of the sidecar, receiving side first: who a peer is ([`trust`]), whom
//! the CA has revoked ([`revocation`]), which messages were seen ([`replay`]) and the
//! receiver's checks in their fixed order ([`receive`]). The envelope itself is
//! `vouch_envelope`'s.

pub mod receive;
pub mod replay;
pub mod revocation;
pub mod trust;
