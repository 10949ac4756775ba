//! The fleet model that policies see: zones, data types and devices as Cedar entities, and
//! requests built from typed values.
//!
//! Entity types (see `examples/policies/schema.cedarschema`):
//! - `Zone` with `trust` (`low`/`medium`/`high`), `protocols` and `egress` (zones it may talk to);
//! - `DataType` with `sensitivity`; data types may sit inside other data types;
//! - `Device`, a member of its `Zone`, with `zone`, `trust`, `device_class`, `capabilities`,
//!   `status` (`active`, `stale`, `quarantined`, `revoked`), `last_attested` (Unix seconds)
//!   and its labels as entity tags.
//!
//! Actions: `send`, `publish`, `enroll`, `renew`. Context: `data_type`, `protocol`, `tls`,
//! `mtls`, `size`.

use cedar_policy::{
    Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, Request, RestrictedExpression,
    Schema,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::str::FromStr;

/// Why entities or a request could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The entities do not fit the schema.
    #[error("entities: {0}")]
    Entities(String),
    /// The request does not fit the schema.
    #[error("request: {0}")]
    Request(String),
}

/// A zone's definition (from the policy repository's `fleet.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneDef {
    /// `low`, `medium` or `high`.
    pub trust: String,
    /// Protocols allowed in the zone, e.g. `mqtt`.
    #[serde(default)]
    pub protocols: Vec<String>,
    /// Zones this zone may send to.
    #[serde(default)]
    pub egress: Vec<String>,
}

/// A data type's definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataTypeDef {
    /// e.g. `low`, `high`.
    pub sensitivity: String,
    /// Broader data types this one belongs to.
    #[serde(default)]
    pub within: Vec<String>,
}

/// The zones and data types of a fleet (`fleet.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetDefs {
    /// Zones by name.
    pub zones: BTreeMap<String, ZoneDef>,
    /// Data types by name.
    pub data_types: BTreeMap<String, DataTypeDef>,
}

/// What the registry knows of a device at decision time.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceFacts {
    /// The device's zone.
    pub zone: String,
    /// `low` (no TPM), `medium` or `high` ([`Standing::trust`]).
    #[serde(default = "default_trust")]
    pub trust: String,
    /// Device class.
    #[serde(default)]
    pub device_class: String,
    /// Capabilities, e.g. `camera`.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// `active`, `unattested`, `stale`, `quarantined` or `revoked` ([`Standing::status`]).
    #[serde(default = "default_status")]
    pub status: String,
    /// Last good attestation, Unix seconds (0: never).
    #[serde(default)]
    pub last_attested: i64,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Where a device stands in the registry: what its policy `status` and `trust` are made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    /// Revoked by an operator.
    pub revoked: bool,
    /// What attestation found last.
    pub attestation: Attestation,
    /// Its keys were bound to a TPM at enrollment.
    pub tpm_bound: bool,
}

/// What a device's attestations have found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attestation {
    /// No attestation recorded yet.
    None,
    /// The last attestation passed.
    Passed,
    /// An attestation failed.
    Quarantined,
    /// The device went silent past its attestation period.
    Stale,
}

impl Standing {
    /// The policy `status`: revocation wins; then the attestation finding. A TPM device that
    /// has not yet passed an attestation is `unattested` (its trust rests on an attestation it
    /// has not given); a device without a TPM never attests and is `active`.
    pub fn status(&self) -> &'static str {
        match (self.revoked, self.attestation) {
            (true, _) => "revoked",
            (false, Attestation::Quarantined) => "quarantined",
            (false, Attestation::Stale) => "stale",
            (false, Attestation::None) if self.tpm_bound => "unattested",
            (false, Attestation::None | Attestation::Passed) => "active",
        }
    }

    /// The policy `trust`: `high` for keys bound to a TPM at enrollment, `low` without.
    pub fn trust(&self) -> &'static str {
        if self.tpm_bound {
            "high"
        } else {
            "low"
        }
    }
}

fn default_trust() -> String {
    "low".into()
}

fn default_status() -> String {
    "active".into()
}

/// The request context of a message or call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageContext {
    /// Data type name.
    pub data_type: String,
    /// Protocol, e.g. `mqtt`.
    pub protocol: String,
    /// Whether the channel is TLS.
    pub tls: bool,
    /// Whether the channel is mutual TLS.
    pub mtls: bool,
    /// Message size in bytes.
    #[serde(deserialize_with = "crate::json::integer")]
    pub size: i64,
}

fn uid(ty: &str, id: &str) -> Value {
    json!({"type": ty, "id": id})
}

/// Builds the entities for `fleet` and `devices` (by id), checked against `schema`.
pub fn entities(
    fleet: &FleetDefs,
    devices: &BTreeMap<String, DeviceFacts>,
    schema: Option<&Schema>,
) -> Result<Entities, ModelError> {
    with_devices(&fleet_entities(fleet, schema)?, devices, schema)
}

/// `fleet`'s entities with `devices` (by id) added, checked against `schema`: what one
/// decision needs, built from the fleet's entities once built (cloning them is cheap next
/// to parsing them again) and the devices' entities made directly (no JSON).
pub fn with_devices(
    fleet: &Entities,
    devices: &BTreeMap<String, DeviceFacts>,
    schema: Option<&Schema>,
) -> Result<Entities, ModelError> {
    let bad = |e: &dyn std::fmt::Display| ModelError::Entities(e.to_string());
    let types = request_types();
    let (device_type, zone_type) = (&types.device, &types.zone);
    let mut list = Vec::with_capacity(devices.len());
    for (id, d) in devices {
        let zone = EntityUid::from_type_name_and_id(zone_type.clone(), EntityId::new(&d.zone));
        let text = |s: &str| RestrictedExpression::new_string(s.to_owned());
        let attrs = [
            ("zone", RestrictedExpression::new_entity_uid(zone.clone())),
            ("trust", text(&d.trust)),
            ("device_class", text(&d.device_class)),
            (
                "capabilities",
                RestrictedExpression::new_set(d.capabilities.iter().map(|c| text(c))),
            ),
            ("status", text(&d.status)),
            (
                "last_attested",
                RestrictedExpression::new_long(d.last_attested),
            ),
        ]
        .map(|(k, v)| (k.to_owned(), v));
        let tags = d.labels.iter().map(|(k, v)| (k.clone(), text(v)));
        let uid = EntityUid::from_type_name_and_id(device_type.clone(), EntityId::new(id));
        list.push(Entity::new_with_tags(uid, attrs, [zone], tags).map_err(|e| bad(&e))?);
    }
    fleet
        .clone()
        .add_entities(list, schema)
        .map_err(|e| bad(&e))
}

/// The zones and data types of `fleet` as entities, checked against `schema`.
pub fn fleet_entities(fleet: &FleetDefs, schema: Option<&Schema>) -> Result<Entities, ModelError> {
    let mut list = Vec::new();
    for (name, z) in &fleet.zones {
        list.push(json!({
            "uid": uid("Zone", name),
            "attrs": {
                "trust": z.trust,
                "protocols": z.protocols,
                "egress": z.egress.iter().map(|e| json!({"__entity": uid("Zone", e)})).collect::<Vec<_>>(),
            },
            "parents": [],
        }));
    }
    for (name, d) in &fleet.data_types {
        list.push(json!({
            "uid": uid("DataType", name),
            "attrs": {"sensitivity": d.sensitivity},
            "parents": d.within.iter().map(|w| uid("DataType", w)).collect::<Vec<_>>(),
        }));
    }
    Entities::from_json_value(Value::Array(list), schema)
        .map_err(|e| ModelError::Entities(e.to_string()))
}

/// Whom a request is about: a device or a zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Target {
    /// A device id.
    Device(String),
    /// A zone name.
    Zone(String),
}

/// Builds a request: `device` does `action` on `target` with `context`, checked against
/// `schema`.
pub fn request(
    device: &str,
    action: &str,
    target: &Target,
    context: &MessageContext,
    schema: Option<&Schema>,
) -> Result<Request, ModelError> {
    let err = |e: &dyn std::fmt::Display| ModelError::Request(e.to_string());
    // Built directly, not parsed from JSON: this runs for every decision. With a schema,
    // `Request::new` checks the entity types and the context against it.
    let types = request_types();
    let of = |ty: &EntityTypeName, id: &str| {
        EntityUid::from_type_name_and_id(ty.clone(), EntityId::new(id))
    };
    let principal = of(&types.device, device);
    let action = of(&types.action, action);
    let resource = match target {
        Target::Device(d) => of(&types.device, d),
        Target::Zone(z) => of(&types.zone, z),
    };
    let context = Context::from_pairs([
        (
            "data_type".to_owned(),
            RestrictedExpression::new_entity_uid(of(&types.data_type, &context.data_type)),
        ),
        (
            "protocol".to_owned(),
            RestrictedExpression::new_string(context.protocol.clone()),
        ),
        (
            "tls".to_owned(),
            RestrictedExpression::new_bool(context.tls),
        ),
        (
            "mtls".to_owned(),
            RestrictedExpression::new_bool(context.mtls),
        ),
        (
            "size".to_owned(),
            RestrictedExpression::new_long(context.size),
        ),
    ])
    .map_err(|e| err(&e))?;
    Request::new(principal, action, resource, context, schema).map_err(|e| err(&e))
}

/// The entity types requests and device entities name, parsed once.
struct RequestTypes {
    device: EntityTypeName,
    zone: EntityTypeName,
    action: EntityTypeName,
    data_type: EntityTypeName,
}

fn request_types() -> &'static RequestTypes {
    static TYPES: std::sync::OnceLock<RequestTypes> = std::sync::OnceLock::new();
    TYPES.get_or_init(|| {
        // These names are valid Cedar type names; parsing them cannot fail.
        let parse = |name: &str| {
            EntityTypeName::from_str(name).unwrap_or_else(|e| unreachable!("`{name}`: {e}"))
        };
        RequestTypes {
            device: parse("Device"),
            zone: parse("Zone"),
            action: parse("Action"),
            data_type: parse("DataType"),
        }
    })
}
