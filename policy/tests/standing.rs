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
