//! Decision latency, indexed and full (Cedar's own evaluation of every policy), for policy
//! sets of 10, 1,000 and 10,000 generated policies, in one run.
//!
//! ```text
//! cargo bench -p vouch-policy --bench decide
//! ```
//! Policy sets: 20 fleet-wide rules of any scope shape, the rest anchored to devices or zones
//! (see `synthetic::Fleet::anchored_policy_text`); conditions always evaluate, as in a
//! repository that passes strict schema validation. Each decision is timed on its own; p50 and p99 are reported, and the ratio of the full
//! evaluation's p99 to the indexed one's. Exits non-zero if the two ever disagree.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Instant;
use vouch_policy::engine::Engine;
use vouch_policy::synthetic::{Draw, Fleet};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    let quick = std::env::var("VOUCH_BENCH_QUICK").is_ok();
    // Conditions that always evaluate, as in a repository that passes strict validation.
    let fleet = Fleet {
        devices: 1_000,
        zones: 20,
        erroring_conditions: false,
    };
    let entities = fleet.entities();
    println!(
        "decision latency (µs), {} devices in {} zones",
        fleet.devices, fleet.zones
    );
    println!(
        "{:>8} {:>12} {:>12} {:>12} {:>12} {:>14}",
        "policies", "indexed p50", "indexed p99", "full p50", "full p99", "p99 full/idx"
    );
    for (n, full_samples) in [(10usize, 20_000usize), (1_000, 2_000), (10_000, 300)] {
        let mut draw = Draw::new(n as u64);
        let engine = Engine::new(fleet.policy_set(n, &mut draw)).unwrap();
        let samples = if quick { 500 } else { 20_000 };
        let full_samples = if quick {
            full_samples.min(50)
        } else {
            full_samples
        };
        let requests: Vec<_> = (0..samples)
            .map(|_| fleet.request(&mut draw).unwrap())
            .collect();

        // Warm up, then time each decision.
        for r in requests.iter().take(100) {
            std::hint::black_box(engine.decide(r, &entities));
        }
        let mut indexed = Vec::with_capacity(samples);
        for r in &requests {
            let t = Instant::now();
            std::hint::black_box(engine.decide(r, &entities));
            indexed.push(t.elapsed().as_secs_f64() * 1e6);
        }
        let mut full = Vec::with_capacity(full_samples);
        for r in requests.iter().take(full_samples) {
            let t = Instant::now();
            let reference = engine.decide_full(r, &entities);
            full.push(t.elapsed().as_secs_f64() * 1e6);
            assert_eq!(
                engine.decide(r, &entities),
                reference,
                "indexed and full disagree"
            );
        }
        indexed.sort_by(f64::total_cmp);
        full.sort_by(f64::total_cmp);
        let (ip50, ip99) = (percentile(&indexed, 0.5), percentile(&indexed, 0.99));
        let (fp50, fp99) = (percentile(&full, 0.5), percentile(&full, 0.99));
        println!(
            "{n:>8} {ip50:>12.1} {ip99:>12.1} {fp50:>12.1} {fp99:>12.1} {:>13.0}x",
            fp99 / ip99
        );
        println!(
            "RESULT\tdecide\tdecision p99, {n} policies, indexed\t{ip99:.1} us\t{fp99:.1} us p99 evaluating every policy\t{:.0}x faster\t{}",
            fp99 / ip99,
            if n == 10_000 {
                if ip99 < 20.0 && fp99 / ip99 >= 1_000.0 {
                    "< 20 us and >= 1000x: met"
                } else {
                    "< 20 us and >= 1000x: NOT met"
                }
            } else {
                "-"
            }
        );
        if n == 10_000 && !quick {
            // The issue's target on the 2-core reference machine; reported, not asserted:
            // a timing is a figure to read, not a pass/fail test.
            let met = ip99 < 20.0 && fp99 / ip99 >= 1_000.0;
            println!(
                "target at 10,000 policies (indexed p99 < 20 µs, >= 1000x full): {}",
                if met { "met" } else { "NOT met" }
            );
        }
    }
}
