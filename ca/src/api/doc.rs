//! The OpenAPI document: generated from the handlers and types, then given what their
//! attributes cannot say (one-of bodies, the policy request's shapes, limits that come from
//! the server's configuration). `tests/interop` validates it and runs schemathesis against
//! a live server with it.

use super::Settings;
use serde_json::{json, Value};
use utoipa::OpenApi;

/// A name of a zone, device class or label key, as `crate::ids` checks it.
pub(crate) const NAME_PATTERN: &str = "^[a-z0-9][a-z0-9._-]{0,62}$";

/// The document a server with `settings` serves at `/openapi.json`.
pub fn document(settings: &Settings) -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or(Value::Null);
    if let Some(schemas) = doc
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    {
        refine_schemas(schemas, settings);
    }
    doc
}

fn refine_schemas(schemas: &mut serde_json::Map<String, Value>, settings: &Settings) {
    // Every code this server answers, with its status and meaning (`vouch_proto::ProblemCode`).
    if let Some(code) = schemas
        .get_mut("Problem")
        .and_then(|p| p.pointer_mut("/properties/code"))
    {
        let codes = vouch_proto::ProblemCode::ALL;
        let listing: Vec<String> = codes
            .iter()
            .map(|c| format!("- `{}` ({}): {}", c.as_str(), c.status(), c.doc()))
            .collect();
        *code = json!({
            "type": "string",
            "enum": codes.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
            "description": format!(
                "Stable machine-readable code; clients act on it (a newer server may add codes).\n{}",
                listing.join("\n")
            ),
        });
    }
    if let Some(token) = schemas.get_mut("CreateTokenRequest") {
        if let Some(ttl) = token.pointer_mut("/properties/ttl_seconds") {
            ttl["maximum"] = json!(settings.max_token_ttl_secs);
        }
        if let Some(labels) = token.pointer_mut("/properties/labels") {
            *labels = json!({
                "type": "object",
                "description": "Labels the device will carry: at most 32, keys named like zones, values printable ASCII up to 255 characters.",
                "maxProperties": vouch_proto::enroll::MAX_LABELS,
                "propertyNames": {"pattern": NAME_PATTERN, "minLength": 1, "maxLength": 63},
                "additionalProperties": {"type": "string", "pattern": "^[ -~]*$", "maxLength": 255},
            });
        }
    }
    // Exactly one way to get a key: a CSR (with `generate_key` absent, null or false), or
    // `generate_key: true` (with `csr_pem` absent or null). Written without `not`, which
    // schemathesis's case generator does not handle reliably.
    if let Some(enroll) = schemas.get_mut("EnrollRequest") {
        enroll["oneOf"] = json!([
            {"required": ["csr_pem"],
             "properties": {"csr_pem": {"type": "string"}, "generate_key": {"enum": [false, null]}}},
            {"required": ["generate_key"],
             "properties": {"csr_pem": {"type": "null"}, "generate_key": {"enum": [true]}}},
        ]);
    }
    // The policy request: a device or a zone, and the message context.
    if let Some(request) = schemas.get_mut("DecisionRequest") {
        if let Some(props) = request.get_mut("properties") {
            props["principal"] = json!({
                "type": "string", "minLength": 1, "maxLength": 64,
                "description": "The acting device's id."});
            props["action"] = json!({
                "type": "string", "minLength": 1, "maxLength": 128,
                "description": "An action of the active policy schema: `send`, `publish`, `enroll`, `renew`, or one the operator defined."});
            props["resource"] = json!({
            "description": "The device or zone acted on.",
            "oneOf": [
                {"type": "object", "required": ["device"], "additionalProperties": false,
                 "properties": {"device": {"type": "string", "minLength": 1, "maxLength": 64}}},
                {"type": "object", "required": ["zone"], "additionalProperties": false,
                 "properties": {"zone": {"type": "string", "minLength": 1, "maxLength": 64}}},
            ]});
            props["context"] = json!({
            "type": "object",
            "description": "The request context.",
            "required": ["data_type", "protocol", "tls", "mtls", "size"],
            "additionalProperties": false,
            "properties": {
                "data_type": {"type": "string", "minLength": 1, "maxLength": 128,
                              "description": "A data type of the active policy set."},
                "protocol": {"type": "string", "maxLength": 64},
                "tls": {"type": "boolean"},
                "mtls": {"type": "boolean"},
                "size": {"type": "integer", "format": "int64"},
            }});
        }
    }
}

/// The OpenAPI document, generated from the handlers and types.
#[derive(OpenApi)]
#[openapi(
    info(title = "Vouch provisioning API", description = "Registration CA and device registry"),
    paths(
        super::enroll::create_bootstrap_token,
        super::enroll::revoke_operator_token,
        super::enroll::enroll,
        super::tpm::enroll_tpm_start,
        super::enroll::renew,
        super::attest::challenge,
        super::attest::quote,
        super::devices::list_devices,
        super::devices::get_device,
        super::devices::revoke_device,
        super::devices::release,
        super::devices::history,
        super::devices::peer,
        super::policy::authorize,
        super::policy::decisions,
        super::policy::upload_decisions,
        super::policy::status,
        super::policy::reload,
        super::policy::bundle,
        super::ops::crl,
        super::ops::trust_bundle,
        super::ops::healthz,
        super::ops::readyz,
        super::ops::metrics,
    ),
    components(schemas(super::problem::Problem, crate::store::DeviceRecord, crate::store::DeviceStatus, crate::store::AttestationState)),
    modifiers(&SecuritySchemes)
)]
pub(crate) struct ApiDoc;

struct SecuritySchemes;

impl utoipa::Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "operator_jwt",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        components.add_security_scheme(
            "device_mtls",
            SecurityScheme::MutualTls {
                description: Some("the device's certificate issued by this CA".into()),
                extensions: None,
            },
        );
    }
}
