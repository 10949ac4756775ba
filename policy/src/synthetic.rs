//! Synthetic fleets, policy sets and requests, drawn from a seed: the inputs of the
//! equivalence tests and the decision benchmark. Deterministic, so a failure can be replayed.

use cedar_policy::{Context, Entities, EntityUid, Policy, PolicyId, PolicySet, Request};

/// A small deterministic PRNG (xorshift64*), enough to draw test inputs.
#[derive(Debug, Clone)]
pub struct Draw(u64);

impl Draw {
    /// A generator from `seed` (any value).
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next value below `n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }

    /// One of `items`.
    pub fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        let i = self.below(items.len() as u64) as usize;
        items.get(i).copied().unwrap_or("")
    }
}

/// Shape of a synthetic fleet.
#[derive(Debug, Clone, Copy)]
pub struct Fleet {
    /// Number of devices, `Device::"d0"` ...
    pub devices: u64,
    /// Number of zones, `Zone::"z0"` ...; device `dN` is in zone `z(N % zones)`.
    pub zones: u64,
    /// Whether generated conditions may fail to evaluate (a missing context attribute, an
    /// attribute a Zone lacks). Strict validation against a schema rejects such policies, so
    /// a real repository has (almost) none; the equivalence tests want them.
    pub erroring_conditions: bool,
}

impl Fleet {
    /// The entities: devices (with a `trust` attribute) in zones, and actions `send` and
    /// `publish` in the action group `messaging`, plus `enroll`.
    pub fn entities(&self) -> Entities {
        let mut list = Vec::new();
        for d in 0..self.devices {
            let trust = match d % 3 {
                0 => "low",
                1 => "medium",
                _ => "high",
            };
            list.push(serde_json::json!({
                "uid": {"type": "Device", "id": format!("d{d}")},
                "attrs": {"trust": trust},
                "parents": [{"type": "Zone", "id": format!("z{}", d % self.zones.max(1))}],
            }));
        }
        for z in 0..self.zones {
            list.push(serde_json::json!({
                "uid": {"type": "Zone", "id": format!("z{z}")}, "attrs": {}, "parents": [],
            }));
        }
        for (action, parents) in [
            ("send", true),
            ("publish", true),
            ("enroll", false),
            ("messaging", false),
        ] {
            let parents = if parents {
                serde_json::json!([{"type": "Action", "id": "messaging"}])
            } else {
                serde_json::json!([])
            };
            list.push(serde_json::json!({
                "uid": {"type": "Action", "id": action}, "attrs": {}, "parents": parents,
            }));
        }
        Entities::from_json_value(serde_json::Value::Array(list), None)
            .unwrap_or_else(|_| Entities::empty())
    }

    fn device(&self, draw: &mut Draw) -> String {
        format!("Device::\"d{}\"", draw.below(self.devices.max(1)))
    }

    fn zone(&self, draw: &mut Draw) -> String {
        format!("Zone::\"z{}\"", draw.below(self.zones.max(1)))
    }

    /// The Cedar text of one random policy: any scope shape, permit or forbid (one in ten),
    /// and conditions (none, `when`, `unless`, both) that may be true, false, or an evaluation
    /// error.
    pub fn policy_text(&self, draw: &mut Draw) -> String {
        // Forbids are rarer and aimed at one device, so that large sets still allow some
        // requests; permits take every scope shape.
        let forbid = draw.below(10) == 0;
        let effect = if forbid { "forbid" } else { "permit" };
        let principal = match if forbid { 1 } else { draw.below(5) } {
            0 => String::new(),
            1 => format!(" == {}", self.device(draw)),
            2 => format!(" in {}", self.zone(draw)),
            3 => " is Device".to_owned(),
            _ => format!(" is Device in {}", self.zone(draw)),
        };
        let action = draw
            .pick(&[
                "",
                " == Action::\"send\"",
                " == Action::\"publish\"",
                " in [Action::\"messaging\"]",
                " in [Action::\"enroll\", Action::\"publish\"]",
            ])
            .to_owned();
        let resource = match draw.below(6) {
            0 => String::new(),
            1 => format!(" == {}", self.device(draw)),
            2 => format!(" == {}", self.zone(draw)),
            3 => format!(" in {}", self.zone(draw)),
            4 => " is Zone".to_owned(),
            _ => " is Device".to_owned(),
        };
        let kinds = if self.erroring_conditions { 13 } else { 9 };
        let clauses = match draw.below(kinds) {
            0 => "when { true }".to_owned(),
            1 => format!("when {{ context.size < {} }}", draw.below(2000)),
            2 => "when { principal.trust == \"low\" }".to_owned(),
            3 => "when { context.tls }".to_owned(),
            4 => "unless { context.tls }".to_owned(),
            5 => "when { context.size > 100 } unless { principal.trust == \"high\" }".to_owned(),
            6 => "when { principal has trust && [\"low\", \"medium\"].contains(principal.trust) }"
                .to_owned(),
            7 => format!(
                "when {{ resource in {} || principal.trust like \"me*\" }}",
                self.zone(draw)
            ),
            8 => String::new(),
            // Errors: a missing context attribute; `trust` of a Zone resource; a condition
            // that is not a boolean, alone or in a second clause.
            9 => "when { context.missing > 1 }".to_owned(),
            10 => "when { resource.trust == \"high\" }".to_owned(),
            11 => "when { context.size }".to_owned(),
            _ => "when { context.tls } unless { context.size }".to_owned(),
        };
        format!("{effect}(principal{principal}, action{action}, resource{resource}) {clauses};")
    }

    /// The Cedar text of a policy anchored to devices or zones, as most policies of a large
    /// fleet are: 40% device-to-device rules (principal and resource `==` a device), 30%
    /// per-device egress (principal `==`), 20% per-device ingress (resource `==`), 10%
    /// zone-to-zone rules (principal `in` a zone, resource `in` a zone).
    pub fn anchored_policy_text(&self, draw: &mut Draw) -> String {
        let effect = if draw.below(10) == 0 {
            "forbid"
        } else {
            "permit"
        };
        let (principal, resource) = match draw.below(10) {
            0..=3 => (
                format!(" == {}", self.device(draw)),
                format!(" == {}", self.device(draw)),
            ),
            4..=6 => (format!(" == {}", self.device(draw)), String::new()),
            7 | 8 => (
                " is Device".to_owned(),
                format!(" == {}", self.device(draw)),
            ),
            _ => (
                format!(" in {}", self.zone(draw)),
                format!(" in {}", self.zone(draw)),
            ),
        };
        let action = draw.pick(&["", " == Action::\"send\"", " in [Action::\"messaging\"]"]);
        let condition = draw.pick(&[
            "true",
            "context.tls",
            "context.size < 1000",
            "principal.trust == \"low\"",
        ]);
        format!("{effect}(principal{principal}, action{action}, resource{resource}) when {{ {condition} }};")
    }

    /// A policy set of `n` policies with ids `p0` ...: the first 20 of any random shape
    /// (fleet-wide rules), the rest anchored to a device or zone.
    pub fn policy_set(&self, n: usize, draw: &mut Draw) -> PolicySet {
        let mut set = PolicySet::new();
        for i in 0..n {
            let text = if i < 20 {
                self.policy_text(draw)
            } else {
                self.anchored_policy_text(draw)
            };
            if let Ok(policy) = Policy::parse(Some(PolicyId::new(format!("p{i}"))), text) {
                let _ = set.add(policy);
            }
        }
        set
    }

    /// A random request: a device sends, publishes or enrolls to a device or a zone, with a
    /// message size and whether the channel is TLS.
    pub fn request(&self, draw: &mut Draw) -> Option<Request> {
        let principal: EntityUid = self.device(draw).parse().ok()?;
        let action: EntityUid =
            format!("Action::\"{}\"", draw.pick(&["send", "publish", "enroll"]))
                .parse()
                .ok()?;
        let resource: EntityUid = if draw.below(2) == 0 {
            self.device(draw)
        } else {
            self.zone(draw)
        }
        .parse()
        .ok()?;
        let context = Context::from_json_value(
            serde_json::json!({"size": draw.below(2000), "tls": draw.below(2) == 0}),
            None,
        )
        .ok()?;
        Request::new(principal, action, resource, context, None).ok()
    }
}
