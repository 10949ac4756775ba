//! How a device's standing in the registry becomes the `status` and `trust` that policies
//! see: revocation wins, quarantine and staleness next, and a TPM device that never passed an
//! attestation is not `active`.
use vouch_policy::model::{Attestation, Standing};

fn standing(revoked: bool, attestation: Attestation, tpm_bound: bool) -> Standing {
    Standing {
        revoked,
        attestation,
        tpm_bound,
    }
}

#[test]
fn every_standing_maps_to_one_status() {
    use Attestation::*;
    let cases = [
        // Revocation wins over every finding.
        (standing(true, None, true), "revoked"),
        (standing(true, Passed, true), "revoked"),
        (standing(true, Quarantined, false), "revoked"),
        (standing(true, Stale, true), "revoked"),
        (standing(false, Quarantined, true), "quarantined"),
        (standing(false, Stale, true), "stale"),
        // A TPM device is trusted for an attestation it has given, not one it has not.
        (standing(false, None, true), "unattested"),
        (standing(false, Passed, true), "active"),
        // A device without a TPM never attests.
        (standing(false, None, false), "active"),
        (standing(false, Passed, false), "active"),
    ];
    for (s, status) in cases {
        assert_eq!(s.status(), status, "{s:?}");
    }
}

#[test]
fn trust_is_high_only_for_keys_bound_to_a_tpm() {
    assert_eq!(standing(false, Attestation::Passed, true).trust(), "high");
    assert_eq!(standing(false, Attestation::None, false).trust(), "low");
}

mod local {
    //! The example policy repository decided from its files alone, as an agent decides with
    //! a verified bundle: the facts decide, and a quarantined sender is refused.
    use std::collections::BTreeMap;
    use vouch_policy::bundle::read_dir_files;
    use vouch_policy::local::LocalPolicy;
    use vouch_policy::model::{DeviceFacts, MessageContext, Target};

    fn facts(zone: &str, status: &str) -> DeviceFacts {
        DeviceFacts {
            zone: zone.into(),
            trust: "low".into(),
            device_class: String::new(),
            capabilities: Vec::new(),
            status: status.into(),
            last_attested: 0,
            labels: BTreeMap::new(),
        }
    }

    #[test]
    fn the_example_policies_decide_from_their_files_and_the_facts_given() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policies");
        let policy = LocalPolicy::from_files(read_dir_files(&dir).unwrap()).unwrap();
        let context: MessageContext = serde_json::from_value(serde_json::json!({
            "data_type": "telemetry", "protocol": "mqtt", "tls": false, "mtls": false, "size": 256
        }))
        .unwrap();
        let to = Target::Device("gw".into());
        let decide = |sensor_status: &str| {
            let devices = BTreeMap::from([
                ("s1".to_owned(), facts("sensors", sensor_status)),
                ("gw".to_owned(), facts("edge", "active")),
            ]);
            policy
                .decide("s1", "send", &to, &context, &devices)
                .unwrap()
        };
        let allowed = decide("active");
        assert!(allowed.allowed, "{allowed:?}");
        assert!(!allowed.policies.is_empty());
        let refused = decide("quarantined");
        assert!(!refused.allowed, "{refused:?}");
    }

    /// The entities built for a set of facts are kept and used again (a sidecar decides for
    /// the same two devices message after message): the decision still follows the facts
    /// given each time, through more distinct sets than are kept.
    #[test]
    fn kept_entities_follow_the_facts_given() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policies");
        let policy = LocalPolicy::from_files(read_dir_files(&dir).unwrap()).unwrap();
        let context: MessageContext = serde_json::from_value(serde_json::json!({
            "data_type": "telemetry", "protocol": "mqtt", "tls": false, "mtls": false, "size": 256
        }))
        .unwrap();
        let to = Target::Device("gw".into());
        for round in 0..3 {
            for i in 0..200_i64 {
                let status = if (i + round) % 3 == 0 {
                    "quarantined"
                } else {
                    "active"
                };
                let devices = BTreeMap::from([
                    (
                        "s1".to_owned(),
                        DeviceFacts {
                            last_attested: i,
                            ..facts("sensors", status)
                        },
                    ),
                    ("gw".to_owned(), facts("edge", "active")),
                ]);
                let decided = policy
                    .decide("s1", "send", &to, &context, &devices)
                    .unwrap();
                assert_eq!(
                    decided.allowed,
                    status == "active",
                    "round {round}, set {i}"
                );
            }
        }
    }

    /// Every fact a device carries reaches the policy: its attributes, its zone as parent,
    /// and its labels as tags.
    #[test]
    fn every_device_fact_reaches_the_policy() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policies");
        let mut files = read_dir_files(&dir).unwrap();
        files.insert(
            "policies/facts.cedar".into(),
            r#"@id("every-fact")
permit (principal in Zone::"sensors", action == Action::"send", resource in Zone::"edge")
when {
  principal.zone == Zone::"sensors" && principal.trust == "medium" &&
  principal.device_class == "meter" && principal.capabilities.contains("adc") &&
  principal.status == "active" && principal.last_attested == 1700000000 &&
  principal.hasTag("line") && principal.getTag("line") == "b" &&
  context.data_type == DataType::"status"
};
"#
            .into(),
        );
        let policy = LocalPolicy::from_files(files).unwrap();
        let context: MessageContext = serde_json::from_value(serde_json::json!({
            "data_type": "status", "protocol": "https", "tls": true, "mtls": true, "size": 1
        }))
        .unwrap();
        let to = Target::Device("gw".into());
        let sensor = DeviceFacts {
            trust: "medium".into(),
            device_class: "meter".into(),
            capabilities: vec!["adc".into()],
            last_attested: 1_700_000_000,
            labels: BTreeMap::from([("line".to_owned(), "b".to_owned())]),
            ..facts("sensors", "active")
        };
        let decide = |sensor: DeviceFacts| {
            let devices = BTreeMap::from([
                ("s1".to_owned(), sensor),
                ("gw".to_owned(), facts("edge", "active")),
            ]);
            policy
                .decide("s1", "send", &to, &context, &devices)
                .unwrap()
        };
        let allowed = decide(sensor.clone());
        assert_eq!(allowed.policies, ["every-fact"], "{allowed:?}");
        for changed in [
            DeviceFacts {
                trust: "low".into(),
                ..sensor.clone()
            },
            DeviceFacts {
                device_class: "pump".into(),
                ..sensor.clone()
            },
            DeviceFacts {
                capabilities: Vec::new(),
                ..sensor.clone()
            },
            DeviceFacts {
                last_attested: 0,
                ..sensor.clone()
            },
            DeviceFacts {
                labels: BTreeMap::from([("line".to_owned(), "a".to_owned())]),
                ..sensor.clone()
            },
            DeviceFacts {
                labels: BTreeMap::new(),
                ..sensor.clone()
            },
        ] {
            let d = decide(changed.clone());
            assert!(
                !d.policies.contains(&"every-fact".to_owned()),
                "{changed:?}: {d:?}"
            );
        }
    }
}
