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
}
