//! Header labels, claim keys and sizes of the envelope format (see `docs/envelope.md`).

/// CWT claims header parameter (RFC 9597), in the outer protected header.
pub const CWT_CLAIMS: i64 = 15;
/// `x5chain` (RFC 9360): the sender's device certificate first, then its issuers. Outer
/// unprotected header, optional.
pub const X5CHAIN: i64 = 33;
/// `x5t` (RFC 9360): `[-16, SHA-256 of the sender's device certificate DER]`. Outer protected.
pub const X5T: i64 = 34;
/// Private use: the data type of the payload (text), as policy names it. Outer protected.
pub const DATA_TYPE: i64 = -65537;
/// Private use: the sender's session id (16 random bytes, new at each sender process start).
/// Outer protected.
pub const SESSION_ID: i64 = -65538;
/// Private use: the sender's sequence number within the session (unsigned). Outer protected.
pub const SEQUENCE: i64 = -65539;

/// Static public key of the sender, a COSE_Key (RFC 9053 §6.3.1). Accepted by
/// [`crate::direct`] for the COSE working group examples; the envelope uses
/// [`STATIC_KEY_ID`] instead.
pub const STATIC_KEY: i64 = -2;
/// Static key id (RFC 9053 §6.3.1): SHA-256 of the sender's key-agreement certificate DER.
/// Recipient unprotected header.
pub const STATIC_KEY_ID: i64 = -3;
/// HKDF salt (RFC 9053 §5.1), 16 fresh bytes per envelope. Recipient unprotected header.
pub const SALT: i64 = -20;
/// PartyU identity (RFC 9053 §5.2): the sender's SPIFFE ID. Recipient unprotected header.
pub const PARTY_U_IDENTITY: i64 = -21;
/// PartyU nonce (RFC 9053 §5.2); not used by the envelope.
pub const PARTY_U_NONCE: i64 = -22;
/// PartyU other (RFC 9053 §5.2); not used by the envelope.
pub const PARTY_U_OTHER: i64 = -23;
/// PartyV identity (RFC 9053 §5.2): the recipient's SPIFFE ID. Recipient unprotected header.
pub const PARTY_V_IDENTITY: i64 = -24;
/// PartyV nonce (RFC 9053 §5.2); not used by the envelope.
pub const PARTY_V_NONCE: i64 = -25;
/// PartyV other (RFC 9053 §5.2); not used by the envelope.
pub const PARTY_V_OTHER: i64 = -26;
/// `x5chain-sender` (RFC 9360): the sender's key-agreement certificate. Recipient unprotected
/// header, optional.
pub const X5CHAIN_SENDER: i64 = -29;

/// CWT claim `iss` (RFC 8392): the sender's SPIFFE ID.
pub const CLAIM_ISS: i64 = 1;
/// CWT claim `aud`: the recipient's SPIFFE ID.
pub const CLAIM_AUD: i64 = 3;
/// CWT claim `exp`: unix seconds.
pub const CLAIM_EXP: i64 = 4;
/// CWT claim `iat`: unix seconds.
pub const CLAIM_IAT: i64 = 6;
/// CWT claim `cti`: 16 random bytes, a message id.
pub const CLAIM_CTI: i64 = 7;

/// COSE algorithm id of SHA-256, as used in `x5t`.
pub const SHA_256: i64 = -16;
/// CoAP content format of `application/cose; cose-type="cose-encrypt"`: the outer
/// content type, saying the payload is a tagged COSE_Encrypt.
pub const CONTENT_FORMAT_COSE_ENCRYPT: u64 = 96;

/// Length of the claim id `cti`.
pub const CTI_LEN: usize = 16;
/// Length of the sender session id.
pub const SESSION_ID_LEN: usize = 16;
/// Length of the HKDF salt.
pub const SALT_LEN: usize = 16;
/// Length of the AES-GCM IV.
pub const IV_LEN: usize = 12;
/// Length of a SHA-256 certificate hash (`x5t`, static key id).
pub const CERT_HASH_LEN: usize = 32;
/// Longest data type accepted, in bytes (as the policy engine bounds it).
pub const MAX_DATA_TYPE_LEN: usize = 128;
/// Longest SPIFFE ID accepted, in bytes (the SPIFFE ID standard's URI limit).
pub const MAX_SPIFFE_ID_LEN: usize = 2048;
