//! Where an indexed decision's time goes, at 10,000 generated policies: finding the matching
//! policies, building their policy set, and Cedar's evaluation of them; and Cedar's cost for
//! an empty set and a one-policy set. A diagnostic for the decision benchmark's figures:
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
    let auth = cedar_policy::Authorizer::new();
    let reqs: Vec<_> = (0..20000)
        .map(|_| fleet.request(&mut draw).unwrap())
        .collect();
    let (mut tm, mut ts, mut ta, mut n) = (0f64, 0f64, 0f64, 0usize);
    for r in &reqs {
        let (p, a, res) = (
            r.principal().unwrap(),
            r.action().unwrap(),
            r.resource().unwrap(),
        );
        let t = Instant::now();
        let m = index.matching(p, a, res, &entities);
        tm += t.elapsed().as_secs_f64();
        n += m.len();
        let t = Instant::now();
        let s = index.matching_set(p, a, res, &entities);
        ts += t.elapsed().as_secs_f64();
        let t = Instant::now();
        std::hint::black_box(auth.is_authorized(r, &s, &entities));
        ta += t.elapsed().as_secs_f64();
    }
    let empty = cedar_policy::PolicySet::new();
    let one: cedar_policy::PolicySet = "permit(principal, action, resource) when { context.tls };"
        .parse()
        .unwrap();
    let t = Instant::now();
    for r in &reqs {
        std::hint::black_box(auth.is_authorized(r, &empty, &entities));
    }
    let te = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for r in &reqs {
        std::hint::black_box(auth.is_authorized(r, &one, &entities));
    }
    let t1 = t.elapsed().as_secs_f64();
    println!(
        "empty set {:.2}us  one policy {:.2}us",
        te / reqs.len() as f64 * 1e6,
        t1 / reqs.len() as f64 * 1e6
    );
    let k = reqs.len() as f64;
    println!(
        "matching {:.1}us  matching_set {:.1}us  authorize {:.1}us  avg matched {:.1}",
        tm / k * 1e6,
        ts / k * 1e6,
        ta / k * 1e6,
        n as f64 / k
    );
}
