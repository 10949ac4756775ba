//! Where an indexed decision's time goes, at 10,000 generated policies: finding the matching
//! policies, and the whole decision (matching, each distinct condition evaluated once by
//! Cedar's evaluator, combining); beside them, Cedar's authorizer over just the matching
//! policies (the fallback path) and over an empty set. A diagnostic for the decision
//! benchmark's figures:
//!
//! ```text
//! cargo run --release -p vouch-policy --example breakdown
//! ```
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
use std::time::Instant;
use vouch_policy::engine::Engine;
use vouch_policy::index::ScopeIndex;
use vouch_policy::synthetic::{Draw, Fleet};

fn main() {
    let fleet = Fleet {
        devices: 1_000,
        zones: 20,
        erroring_conditions: false,
    };
    let entities = fleet.entities();
    let mut draw = Draw::new(10_000);
    let set = fleet.policy_set(10_000, &mut draw);
    let index = ScopeIndex::new(&set).unwrap();
    let engine = Engine::new(set).unwrap();
    let auth = cedar_policy::Authorizer::new();
    let requests: Vec<_> = (0..20_000)
        .map(|_| fleet.request(&mut draw).unwrap())
        .collect();
    let (mut matching, mut decide, mut fallback, mut matched) = (0f64, 0f64, 0f64, 0usize);
    for r in &requests {
        let (p, a, res) = (
            r.principal().unwrap(),
            r.action().unwrap(),
            r.resource().unwrap(),
        );
        let t = Instant::now();
        matched += std::hint::black_box(index.matching_positions(p, a, res, &entities)).len();
        matching += t.elapsed().as_secs_f64();
        let t = Instant::now();
        std::hint::black_box(engine.decide(r, &entities));
        decide += t.elapsed().as_secs_f64();
        let subset = index.matching_set(p, a, res, &entities);
        let t = Instant::now();
        std::hint::black_box(auth.is_authorized(r, &subset, &entities));
        fallback += t.elapsed().as_secs_f64();
    }
    let empty = cedar_policy::PolicySet::new();
    let t = Instant::now();
    for r in &requests {
        std::hint::black_box(auth.is_authorized(r, &empty, &entities));
    }
    let empty_set = t.elapsed().as_secs_f64();
    let per = |total: f64| total / requests.len() as f64 * 1e6;
    println!(
        "10,000 policies, {} distinct conditions, {:.1} matching per request",
        engine.distinct_conditions(),
        matched as f64 / requests.len() as f64
    );
    println!(
        "matching {:.1}us  decide {:.1}us  | authorizer over the matching {:.1}us, over an empty set {:.2}us",
        per(matching),
        per(decide),
        per(fallback),
        per(empty_set)
    );
}
