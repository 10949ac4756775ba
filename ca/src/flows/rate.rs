//! Per-caller rate limits: a token bucket per caller name (e.g. `operator:alice`,
//! `device:<id>`), refilled at a steady rate up to a burst. Bounded memory: when it tracks too
//! many callers it forgets the full buckets first, then everything (a forgotten caller starts
//! with a full bucket, which is what a new caller gets anyway).

use std::collections::HashMap;
use std::sync::Mutex;

/// Most callers tracked at once.
pub const MAX_CALLERS: usize = 100_000;

/// Token buckets by caller.
#[derive(Debug)]
pub struct CallerBuckets {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, i64)>>,
}

impl CallerBuckets {
    /// `per_second` calls a second for each caller, in bursts of up to `burst`. Zero rates
    /// turn the limit off.
    pub fn new(per_second: u32, burst: u32) -> Self {
        Self {
            per_second: f64::from(per_second),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one call for `caller` at `now_ms` (Unix milliseconds); if the bucket is empty,
    /// the seconds until the next call is allowed.
    pub fn take(&self, caller: &str, now_ms: i64) -> Result<(), u64> {
        if self.per_second <= 0.0 {
            return Ok(());
        }
        let Ok(mut buckets) = self.buckets.lock() else {
            return Ok(());
        };
        if buckets.len() >= MAX_CALLERS && !buckets.contains_key(caller) {
            let (per_second, burst) = (self.per_second, self.burst);
            buckets.retain(|_, (tokens, at)| {
                let refill = (now_ms - *at).max(0) as f64 / 1000.0 * per_second;
                *tokens + refill < burst
            });
            if buckets.len() >= MAX_CALLERS {
                buckets.clear();
            }
        }
        let (tokens, at) = buckets
            .entry(caller.to_owned())
            .or_insert((self.burst, now_ms));
        let elapsed = (now_ms - *at).max(0) as f64 / 1000.0;
        *tokens = (*tokens + elapsed * self.per_second).min(self.burst);
        *at = now_ms;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - *tokens) / self.per_second;
            Err(wait.ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_steady_rate_per_caller() {
        let b = CallerBuckets::new(2, 4);
        for _ in 0..4 {
            b.take("a", 0).unwrap();
        }
        assert_eq!(b.take("a", 0), Err(1));
        // Another caller has its own bucket.
        b.take("b", 0).unwrap();
        // Half a second refills one call at 2/s.
        b.take("a", 500).unwrap();
        assert!(b.take("a", 500).is_err());
        // Never more than the burst, however long the pause.
        for _ in 0..4 {
            b.take("a", 3_600_000).unwrap();
        }
        assert!(b.take("a", 3_600_000).is_err());
        // Off.
        let off = CallerBuckets::new(0, 0);
        for _ in 0..1000 {
            off.take("a", 0).unwrap();
        }
    }
}
