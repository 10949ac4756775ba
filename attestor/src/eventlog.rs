//! The TCG PC Client event log in crypto-agile form (TCG PC Client Platform Firmware Profile,
//! section 10): a `TCG_PCR_EVENT` header carrying the `Spec ID Event03` structure, then
//! `TCG_PCR_EVENT2` entries. All integers are little-endian. Parsing is strict and bounded;
//! [`EventLog::replay`] recomputes the SHA-256 PCR bank from the events.

use crate::tpm::ALG_SHA256;
use crate::wire::Reader;
use crate::ParseError;
use std::collections::BTreeMap;

/// Largest event log accepted.
pub const MAX_LOG_BYTES: usize = 4 * 1024 * 1024;
/// Most events in a log.
pub const MAX_EVENTS: usize = 20_000;
/// Largest event data.
pub const MAX_EVENT_DATA: usize = 1024 * 1024;
/// Most digests in one event, and most algorithms in the header.
pub const MAX_DIGESTS: u32 = 8;
/// PCRs a PC Client TPM has.
pub const PCR_COUNT: u32 = 24;

/// `EV_NO_ACTION`: informational, never extended.
pub const EV_NO_ACTION: u32 = 0x3;
/// `EV_S_CRTM_VERSION`.
pub const EV_S_CRTM_VERSION: u32 = 0x8;
/// `EV_POST_CODE`.
pub const EV_POST_CODE: u32 = 0x1;
/// `EV_EVENT_TAG`.
pub const EV_EVENT_TAG: u32 = 0x6;

const SPEC_ID_SIGNATURE: &[u8; 16] = b"Spec ID Event03\0";
const STARTUP_LOCALITY: &[u8; 16] = b"StartupLocality\0";

/// One measured event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The PCR it was extended into.
    pub pcr: u8,
    /// The event type (`EV_*`).
    pub event_type: u32,
    /// Its SHA-256 digest, if the log carries one for this event.
    pub sha256: Option<[u8; 32]>,
    /// The event data.
    pub data: Vec<u8>,
}

/// A parsed event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventLog {
    /// The events after the header, in order.
    pub events: Vec<Event>,
}

impl EventLog {
    /// Parses a crypto-agile event log.
    pub fn parse(bytes: &[u8]) -> Result<Self, ParseError> {
        if bytes.len() > MAX_LOG_BYTES {
            return Err(ParseError::TooLarge {
                what: "event log",
                len: bytes.len(),
                max: MAX_LOG_BYTES,
            });
        }
        let mut r = Reader::new(bytes);
        let sizes = parse_header(&mut r)?;
        let mut events = Vec::new();
        while r.remaining() > 0 {
            if events.len() >= MAX_EVENTS {
                return Err(ParseError::TooLarge {
                    what: "event count",
                    len: events.len() + 1,
                    max: MAX_EVENTS,
                });
            }
            events.push(parse_event(&mut r, &sizes)?);
        }
        Ok(Self { events })
    }

    /// The SHA-256 PCR values the events extend to, for every PCR an event touches (all
    /// PCRs start at zero, except PCR 0 after a `StartupLocality` event).
    pub fn replay(&self) -> Result<BTreeMap<u8, [u8; 32]>, ParseError> {
        let mut pcrs: BTreeMap<u8, [u8; 32]> = BTreeMap::new();
        for e in &self.events {
            if e.event_type == EV_NO_ACTION {
                if e.pcr == 0 && e.data.starts_with(STARTUP_LOCALITY) {
                    let locality = *e.data.get(16).ok_or(ParseError::Truncated("locality"))?;
                    let mut init = [0u8; 32];
                    init[31] = locality;
                    pcrs.insert(0, init);
                }
                continue;
            }
            let digest = e.sha256.ok_or(ParseError::Unsupported {
                what: "event without a SHA-256 digest",
                value: e.event_type,
            })?;
            let current = pcrs.entry(e.pcr).or_insert([0u8; 32]);
            let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
            ctx.update(current);
            ctx.update(&digest);
            current.copy_from_slice(ctx.finish().as_ref());
        }
        Ok(pcrs)
    }
}

/// Digest sizes by algorithm, from the `Spec ID Event03` header.
type DigestSizes = BTreeMap<u16, u16>;

fn parse_header(r: &mut Reader<'_>) -> Result<DigestSizes, ParseError> {
    // TCG_PCR_EVENT (SHA-1 format): pcrIndex, eventType, digest[20], eventSize, event.
    let pcr = r.u32_le("header pcr index")?;
    let event_type = r.u32_le("header event type")?;
    if pcr != 0 || event_type != EV_NO_ACTION {
        return Err(ParseError::BadLogHeader(
            "first event must be EV_NO_ACTION in PCR 0",
        ));
    }
    r.take(20, "header digest")?;
    let size = r.u32_le("header event size")? as usize;
    if size > 4096 {
        return Err(ParseError::TooLarge {
            what: "spec id event",
            len: size,
            max: 4096,
        });
    }
    let mut spec = Reader::new(r.take(size, "spec id event")?);
    if spec.take(16, "spec id signature")? != SPEC_ID_SIGNATURE {
        return Err(ParseError::BadLogHeader(
            "not a crypto-agile log (no `Spec ID Event03`)",
        ));
    }
    spec.u32_le("platform class")?;
    spec.take(4, "spec version")?; // minor, major, errata, uintnSize
    let count = spec.u32_le("algorithm count")?;
    if count == 0 || count > MAX_DIGESTS {
        return Err(ParseError::TooLarge {
            what: "algorithm count",
            len: count as usize,
            max: MAX_DIGESTS as usize,
        });
    }
    let mut sizes = DigestSizes::new();
    for _ in 0..count {
        let alg = spec.u16_le("algorithm id")?;
        let size = spec.u16_le("digest size")?;
        if size == 0 || size > 64 {
            return Err(ParseError::TooLarge {
                what: "digest size",
                len: usize::from(size),
                max: 64,
            });
        }
        if alg == ALG_SHA256 && size != 32 {
            return Err(ParseError::BadLogHeader("SHA-256 digest size must be 32"));
        }
        sizes.insert(alg, size);
    }
    let vendor = spec.u8("vendor info size")?;
    spec.take(usize::from(vendor), "vendor info")?;
    spec.finish("spec id event")?;
    Ok(sizes)
}

fn parse_event(r: &mut Reader<'_>, sizes: &DigestSizes) -> Result<Event, ParseError> {
    let pcr = r.u32_le("pcr index")?;
    if pcr >= PCR_COUNT {
        return Err(ParseError::Unsupported {
            what: "pcr index",
            value: pcr,
        });
    }
    let event_type = r.u32_le("event type")?;
    let count = r.u32_le("digest count")?;
    if count > MAX_DIGESTS {
        return Err(ParseError::TooLarge {
            what: "digest count",
            len: count as usize,
            max: MAX_DIGESTS as usize,
        });
    }
    let mut sha256 = None;
    for _ in 0..count {
        let alg = r.u16_le("digest algorithm")?;
        let size = *sizes.get(&alg).ok_or(ParseError::Unsupported {
            what: "digest algorithm not in the log header",
            value: u32::from(alg),
        })?;
        let digest = r.take(usize::from(size), "digest")?;
        if alg == ALG_SHA256 {
            let mut d = [0u8; 32];
            d.copy_from_slice(digest);
            sha256 = Some(d);
        }
    }
    let size = r.u32_le("event size")? as usize;
    if size > MAX_EVENT_DATA {
        return Err(ParseError::TooLarge {
            what: "event data",
            len: size,
            max: MAX_EVENT_DATA,
        });
    }
    let data = r.take(size, "event data")?.to_vec();
    Ok(Event {
        pcr: u8::try_from(pcr).unwrap_or(u8::MAX),
        event_type,
        sha256,
        data,
    })
}

/// Writes a crypto-agile event log with SHA-256 digests only: what firmware writes, for
/// tests and fixtures.
pub fn write_log(events: &[Event]) -> Vec<u8> {
    let mut spec = Vec::new();
    spec.extend_from_slice(SPEC_ID_SIGNATURE);
    spec.extend_from_slice(&0u32.to_le_bytes()); // platform class: client
    spec.extend_from_slice(&[0, 2, 0, 2]); // version 2.0, errata 0, uintnSize 2 (64-bit)
    spec.extend_from_slice(&1u32.to_le_bytes());
    spec.extend_from_slice(&ALG_SHA256.to_le_bytes());
    spec.extend_from_slice(&32u16.to_le_bytes());
    spec.push(0);
    let mut out = Vec::new();
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&EV_NO_ACTION.to_le_bytes());
    out.extend_from_slice(&[0u8; 20]);
    out.extend_from_slice(&(spec.len() as u32).to_le_bytes());
    out.extend_from_slice(&spec);
    for e in events {
        out.extend_from_slice(&u32::from(e.pcr).to_le_bytes());
        out.extend_from_slice(&e.event_type.to_le_bytes());
        match e.sha256 {
            Some(d) => {
                out.extend_from_slice(&1u32.to_le_bytes());
                out.extend_from_slice(&ALG_SHA256.to_le_bytes());
                out.extend_from_slice(&d);
            }
            None => out.extend_from_slice(&0u32.to_le_bytes()),
        }
        out.extend_from_slice(&(e.data.len() as u32).to_le_bytes());
        out.extend_from_slice(&e.data);
    }
    out
}
