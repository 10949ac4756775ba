//! Acceptance 1: default deny (empty set, unmatched request), forbid beats permit, and order
//! independence, as property tests over generated requests and policy sets.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use cedar_policy::{Policy, PolicyId, PolicySet};
use proptest::prelude::*;
use vouch_policy::engine::Engine;
use vouch_policy::synthetic::{Draw, Fleet};

const FLEET: Fleet = Fleet {
    devices: 30,
    zones: 4,
    erroring_conditions: true,
};

fn set_of(texts: &[String]) -> PolicySet {
    let mut set = PolicySet::new();
    for (i, text) in texts.iter().enumerate() {
        set.add(Policy::parse(Some(PolicyId::new(format!("p{i}"))), text).unwrap())
            .unwrap();
    }
    set
}

fn texts(seed: u64, n: usize) -> Vec<String> {
    let mut draw = Draw::new(seed);
    (0..n).map(|_| FLEET.policy_text(&mut draw)).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn an_empty_set_denies_everything(seed in any::<u64>()) {
        let engine = Engine::new(PolicySet::new()).unwrap();
        let request = FLEET.request(&mut Draw::new(seed)).unwrap();
        let d = engine.decide(&request, &FLEET.entities());
        prop_assert!(!d.allowed);
        prop_assert!(d.policies.is_empty());
    }

    #[test]
    fn a_request_no_policy_names_is_denied(seed in any::<u64>(), n in 1usize..40) {
        // Every policy is about a device outside the fleet.
        let texts: Vec<String> = (0..n)
            .map(|i| format!("permit(principal == Device::\"outsider{i}\", action, resource);"))
            .collect();
        let engine = Engine::new(set_of(&texts)).unwrap();
        let request = FLEET.request(&mut Draw::new(seed)).unwrap();
        let d = engine.decide(&request, &FLEET.entities());
        prop_assert!(!d.allowed);
        prop_assert!(d.policies.is_empty());
    }

    #[test]
    fn a_matching_forbid_beats_any_permits(seed in any::<u64>(), n in 0usize..40) {
        let mut texts = texts(seed, n);
        texts.push("permit(principal, action, resource);".into());
        texts.push("forbid(principal, action, resource);".into());
        let forbid_id = format!("p{}", texts.len() - 1);
        let engine = Engine::new(set_of(&texts)).unwrap();
        let request = FLEET.request(&mut Draw::new(seed ^ 1)).unwrap();
        let d = engine.decide(&request, &FLEET.entities());
        prop_assert!(!d.allowed);
        prop_assert!(d.policies.contains(&forbid_id));
        prop_assert!(d.policies.iter().all(|p| {
            let i: usize = p[1..].parse().unwrap();
            texts[i].starts_with("forbid")
        }), "only forbids decide a denial: {:?}", d.policies);
    }

    #[test]
    fn order_does_not_matter(seed in any::<u64>(), n in 1usize..40, rotate in 0usize..40) {
        let texts = texts(seed, n);
        let engine = Engine::new(set_of(&texts)).unwrap();
        // The same policies, with the same ids, added in another order.
        let mut order: Vec<usize> = (0..n).collect();
        order.rotate_left(rotate % n);
        order.reverse();
        let mut shuffled = PolicySet::new();
        for i in order {
            shuffled
                .add(Policy::parse(Some(PolicyId::new(format!("p{i}"))), &texts[i]).unwrap())
                .unwrap();
        }
        let other = Engine::new(shuffled).unwrap();
        let entities = FLEET.entities();
        let mut draw = Draw::new(seed ^ 2);
        for _ in 0..20 {
            let request = FLEET.request(&mut draw).unwrap();
            prop_assert_eq!(engine.decide(&request, &entities), other.decide(&request, &entities));
        }
    }
}
