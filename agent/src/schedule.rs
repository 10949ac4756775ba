//! When to act: renewal at about half the certificate's lifetime (±10 % jitter, so a fleet
//! enrolled together does not renew together), and retries with capped exponential backoff
//! and full jitter. Plain functions of the time and randomness they are given.

use std::time::Duration;
use time::OffsetDateTime;

/// A source of randomness for jitter (not for keys: those come from ring).
pub trait Random: Send + Sync {
    /// A uniformly distributed `u64`.
    fn next_u64(&self) -> u64;

    /// A uniform fraction in `[0, 1]`.
    fn unit(&self) -> f64 {
        // 53 bits: the precision of an f64 mantissa.
        (self.next_u64() >> 11) as f64 / ((1u64 << 53) - 1) as f64
    }
}

/// The operating system's randomness (through ring).
#[derive(Debug)]
pub struct SystemRandom(ring::rand::SystemRandom);

impl Default for SystemRandom {
    fn default() -> Self {
        Self(ring::rand::SystemRandom::new())
    }
}

impl Random for SystemRandom {
    fn next_u64(&self) -> u64 {
        use ring::rand::SecureRandom;
        let mut b = [0u8; 8];
        // INVARIANT: the OS RNG does not fail on Linux once booted; if it did, jitter would
        // be zero, which only makes timing less spread, never wrong.
        let _ = self.0.fill(&mut b);
        u64::from_le_bytes(b)
    }
}

/// A clock, passed in so schedules can be tested without waiting.
pub trait Clock: Send + Sync {
    /// The current time.
    fn now(&self) -> OffsetDateTime;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// The wall clock as tokio's timer sees it: the wall-clock time when the clock was made, plus
/// the time tokio has counted since. The agent waits with tokio's timer, so with this clock
/// its reading of the time and its waits move together; in tests with tokio's time paused,
/// hours of schedule (30-minute attestations, renewals at half-life) pass in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    wall: OffsetDateTime,
    start: tokio::time::Instant,
}

impl TokioClock {
    /// A clock that reads the wall clock now and follows tokio's time from here.
    pub fn starting_now() -> Self {
        Self {
            wall: OffsetDateTime::now_utc(),
            start: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> OffsetDateTime {
        self.wall + self.start.elapsed()
    }
}

/// How retries back off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The first delay's ceiling.
    pub initial: Duration,
    /// The largest delay.
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
        }
    }
}

/// Capped exponential backoff with full jitter: the n-th delay is uniform in
/// `[0, min(max, initial * 2^n)]` (never below a millisecond, so a retry never spins).
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: RetryPolicy,
    attempt: u32,
}

impl Backoff {
    /// A backoff at its first attempt.
    pub fn new(policy: RetryPolicy) -> Self {
        Self { policy, attempt: 0 }
    }

    /// The delay before the next retry.
    pub fn next_delay(&mut self, rng: &dyn Random) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        ceiling
            .mul_f64(rng.unit())
            .max(Duration::from_millis(1).min(ceiling))
    }

    /// The ceiling of the next delay.
    pub fn ceiling(&self) -> Duration {
        let factor = 2u32.checked_pow(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.policy
            .initial
            .checked_mul(factor)
            .unwrap_or(self.policy.max)
            .min(self.policy.max)
    }

    /// Failed attempts so far.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Back to the first attempt, after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Jitter around the renewal point: ±10 % of the half-lifetime.
pub const RENEWAL_JITTER: f64 = 0.10;

/// When to renew a certificate valid from `not_before` to `not_after`, received at
/// `obtained_at`: half-way through what was left of it when it arrived (a server backdates
/// `notBefore`), jittered by ±10 % of that half.
pub fn renewal_time(
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    obtained_at: OffsetDateTime,
    rng: &dyn Random,
) -> OffsetDateTime {
    let start = not_before.max(obtained_at).min(not_after);
    let half = (not_after - start) / 2;
    let jitter = half * (RENEWAL_JITTER * (2.0 * rng.unit() - 1.0));
    start + half + jitter
}

/// How long until `at`, from `now` (zero if past).
pub fn until(now: OffsetDateTime, at: OffsetDateTime) -> Duration {
    Duration::try_from(at - now).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Returns the given values in turn, forever.
    struct Fixed(Vec<u64>, AtomicU64);

    impl Fixed {
        fn new(values: &[u64]) -> Self {
            Self(values.to_vec(), AtomicU64::new(0))
        }
    }

    impl Random for Fixed {
        fn next_u64(&self) -> u64 {
            let i = self.1.fetch_add(1, Ordering::Relaxed) as usize;
            self.0[i % self.0.len()]
        }
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_stays_within_it() {
        let policy = RetryPolicy::default();
        let mut b = Backoff::new(policy);
        let top = Fixed::new(&[u64::MAX]);
        let ceilings: Vec<u64> = (0..10).map(|_| b.next_delay(&top).as_secs()).collect();
        assert_eq!(ceilings, [1, 2, 4, 8, 16, 32, 60, 60, 60, 60]);
        // Thousands of attempts: no overflow, still capped.
        for _ in 0..5000 {
            assert!(b.next_delay(&top) <= policy.max);
        }
        b.reset();
        assert_eq!(b.ceiling(), policy.initial);
    }

    #[test]
    fn backoff_is_jittered_over_the_whole_range() {
        let rng = SystemRandom::default();
        let mut b = Backoff::new(RetryPolicy::default());
        for _ in 0..6 {
            b.next_delay(&rng);
        }
        // Ceiling is now 60 s: delays spread over [0, 60 s].
        let delays: Vec<Duration> = (0..200)
            .map(|_| {
                let mut c = b.clone();
                c.next_delay(&rng)
            })
            .collect();
        assert!(delays
            .iter()
            .all(|d| *d <= Duration::from_secs(60) && *d > Duration::ZERO));
        assert!(delays.iter().any(|d| *d < Duration::from_secs(20)));
        assert!(delays.iter().any(|d| *d > Duration::from_secs(40)));
        let zero = Fixed::new(&[0]);
        assert_eq!(
            Backoff::new(RetryPolicy::default()).next_delay(&zero),
            Duration::from_millis(1)
        );
    }

    #[test]
    fn renewal_is_half_way_with_ten_percent_jitter() {
        let t0 = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let day = time::Duration::days(1);
        let mid = Fixed::new(&[u64::MAX / 2]);
        let at = renewal_time(t0, t0 + day, t0, &mid);
        assert!((at - (t0 + day / 2_i32)).abs() < time::Duration::seconds(1));
        let early = renewal_time(t0, t0 + day, t0, &Fixed::new(&[0]));
        assert_eq!(early, t0 + day / 2_i32 - day / 20_i32);
        let late = renewal_time(t0, t0 + day, t0, &Fixed::new(&[u64::MAX]));
        assert_eq!(late, t0 + day / 2_i32 + day / 20_i32);
        // A backdated notBefore does not count: timed from when the certificate arrived.
        let backdated = renewal_time(
            t0 - time::Duration::minutes(5),
            t0 + time::Duration::seconds(10),
            t0,
            &mid,
        );
        assert!(
            (backdated - (t0 + time::Duration::seconds(5))).abs()
                < time::Duration::milliseconds(10)
        );
        // Random jitter stays inside the band.
        let rng = SystemRandom::default();
        for _ in 0..100 {
            let at = renewal_time(t0, t0 + day, t0, &rng);
            assert!(at >= t0 + day * 0.45 && at <= t0 + day * 0.55);
        }
    }

    #[test]
    fn until_is_never_negative() {
        let t0 = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        assert_eq!(until(t0, t0 - time::Duration::hours(1)), Duration::ZERO);
        assert_eq!(
            until(t0, t0 + time::Duration::seconds(3)),
            Duration::from_secs(3)
        );
    }
}
