//! Acceptance 2: the indexed evaluation gives the same decision, the same deciding policies
//! and the same errors as Cedar's full evaluation, on generated requests over generated
//! policy sets of 10, 1,000 and 10,000 policies.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use vouch_policy::engine::Engine;
use vouch_policy::synthetic::{Draw, Fleet};

fn equivalent(policies: usize, requests: usize, seed: u64) {
    let fleet = Fleet {
        devices: 200,
        zones: 8,
        erroring_conditions: true,
    };
    let mut draw = Draw::new(seed);
    let engine = Engine::new(fleet.policy_set(policies, &mut draw)).unwrap();
    assert_eq!(engine.len(), policies);
    // Conditions repeat: far fewer distinct ones than policies in a large set.
    assert!(engine.distinct_conditions() > 0);
    assert!(policies < 1_000 || engine.distinct_conditions() * 10 < policies);
    let entities = fleet.entities();
    let (mut allowed, mut with_errors, mut by_conditions) = (0, 0, 0);
    for i in 0..requests {
        let request = fleet.request(&mut draw).unwrap();
        let fast = engine.decide(&request, &entities);
        let full = engine.decide_full(&request, &entities);
        assert_eq!(fast, full, "request {i} (seed {seed}): {request}");
        // The path without Cedar's authorizer, when it answers, answers the same; it
        // leaves every request that meets an error to the authorizer.
        if let Some(quick) = engine.decide_by_conditions(&request, &entities) {
            assert_eq!(quick, full, "request {i} (seed {seed}): {request}");
            by_conditions += 1;
        } else {
            assert!(
                !full.errors.is_empty(),
                "request {i} (seed {seed}) not decided by conditions: {request}"
            );
        }
        allowed += usize::from(full.allowed);
        with_errors += usize::from(!full.errors.is_empty());
    }
    // Every request without an error was decided without the authorizer.
    assert_eq!(by_conditions, requests - with_errors);
    // The generated inputs exercise allow, deny and errors, or the comparison proves little.
    assert!(
        allowed > 0 && allowed < requests,
        "allowed {allowed} of {requests}"
    );
    assert!(with_errors > 0, "no request met an evaluation error");
}

#[test]
fn ten_policies() {
    equivalent(10, 5_000, 1);
}

#[test]
fn a_thousand_policies() {
    equivalent(1_000, 3_000, 2);
}

#[test]
fn ten_thousand_policies() {
    equivalent(10_000, 1_000, 3);
}
