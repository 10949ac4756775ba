//! Policy at both ends of a message: the sender asks before it seals (egress), the receiver
//! asks again before it decrypts (ingress), each with its own copy of the fleet's policies
//! (the signed bundle, verified against the pinned root) and the facts the peer directory
//! gives of both devices. Without a verified bundle every message is refused. Allowed
//! messages also pass the `@rate_limit("N/min")` annotations of the policies that allowed
//! them: one token bucket per policy and peer, at the sender.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use vouch_policy::engine::Annotation;
use vouch_policy::local::LocalPolicy;
use vouch_policy::model::{DeviceFacts, MessageContext, Target};
use vouch_proto::ids::TrustDomain;

/// The Cedar action of a message.
pub const SEND: &str = "send";
/// Most token buckets kept; when full they are all dropped (and start full again).
const MAX_BUCKETS: usize = 10_000;

/// One side of a message, with what policy sees of it.
#[derive(Debug, Clone, Copy)]
pub struct Party<'a> {
    /// The device id.
    pub device_id: &'a str,
    /// Its facts, from the peer directory.
    pub facts: &'a DeviceFacts,
}

/// What policy answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Allowed or not.
    pub allowed: bool,
    /// The deciding policies (empty for a default deny).
    pub policies: Vec<String>,
    /// Their annotations (`rate_limit`).
    pub annotations: Vec<Annotation>,
    /// The policy version that decided.
    pub version: String,
}

impl Verdict {
    /// A refusal without a policy set to ask.
    fn no_policy() -> Self {
        Self {
            allowed: false,
            policies: Vec::new(),
            annotations: Vec::new(),
            version: String::new(),
        }
    }

    /// A plain description of a denial: the deciding policies, or that none allowed it.
    pub fn describe(&self) -> String {
        if self.version.is_empty() {
            "no verified policy bundle yet: every message is refused".into()
        } else if self.policies.is_empty() {
            format!(
                "no policy allows it (default deny, policy version {})",
                self.version
            )
        } else {
            format!(
                "denied by {} (policy version {})",
                self.policies.join(", "),
                self.version
            )
        }
    }
}

/// Decides messages.
pub trait Decider: Send + Sync {
    /// May `from` send to `to` in `context`?
    fn decide(&self, from: Party<'_>, to: Party<'_>, context: &MessageContext) -> Verdict;

    /// The policy version in use, if there is one.
    fn version(&self) -> Option<String> {
        None
    }
}

/// A verified policy bundle, loaded.
#[derive(Debug)]
pub struct Loaded {
    policy: LocalPolicy,
    version: String,
    sequence: i64,
    content_hash: String,
}

impl Loaded {
    /// Verifies the signed bundle `jws` against `root_der` for `trust_domain` at `now` and
    /// loads its files.
    pub fn verify(
        jws: &str,
        root_der: &[u8],
        trust_domain: &str,
        now: i64,
    ) -> Result<Self, String> {
        let domain = TrustDomain::parse(trust_domain).map_err(|e| e.to_string())?;
        let claims =
            vouch_proto::bundle::verify(jws, root_der, &domain, now).map_err(|e| e.to_string())?;
        let policy = LocalPolicy::from_files(claims.files).map_err(|e| e.to_string())?;
        Ok(Self {
            policy,
            version: claims.version,
            sequence: claims.sequence,
            content_hash: claims.content_hash,
        })
    }

    /// The version decisions name.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The bundle's sequence number (see `vouch_proto::bundle::BundleClaims::sequence`).
    pub fn sequence(&self) -> i64 {
        self.sequence
    }

    /// Whether this bundle may replace `held`: a higher sequence number (a newer activation,
    /// whatever the signing times), or the same number for the same files. Not lower: an old
    /// bundle replayed, or a lagging replica's, does not roll policy back.
    fn may_replace(&self, held: &Loaded) -> bool {
        self.sequence > held.sequence
            || (self.sequence == held.sequence && self.content_hash == held.content_hash)
    }
}

/// The fleet's policies as this sidecar last verified them; none until the first bundle.
#[derive(Debug, Default)]
pub struct BundlePolicy {
    current: RwLock<Option<Arc<Loaded>>>,
}

impl BundlePolicy {
    /// Uses `loaded` from now on, unless its sequence number is below the one in use (a
    /// replayed old bundle does not roll policy back). Returns whether it was taken.
    pub fn install(&self, loaded: Loaded) -> bool {
        let Ok(mut current) = self.current.write() else {
            return false;
        };
        if current.as_ref().is_some_and(|c| !loaded.may_replace(c)) {
            return false;
        }
        *current = Some(Arc::new(loaded));
        true
    }
}

impl Decider for BundlePolicy {
    fn version(&self) -> Option<String> {
        self.current
            .read()
            .ok()
            .and_then(|c| c.as_ref().map(|l| l.version.clone()))
    }

    fn decide(&self, from: Party<'_>, to: Party<'_>, context: &MessageContext) -> Verdict {
        let loaded = self.current.read().ok().and_then(|c| c.clone());
        let Some(loaded) = loaded else {
            return Verdict::no_policy();
        };
        let devices = BTreeMap::from([
            (from.device_id.to_owned(), from.facts.clone()),
            (to.device_id.to_owned(), to.facts.clone()),
        ]);
        let target = Target::Device(to.device_id.to_owned());
        match loaded
            .policy
            .decide(from.device_id, SEND, &target, context, &devices)
        {
            Ok(d) => Verdict {
                allowed: d.allowed,
                policies: d.policies,
                annotations: d.annotations,
                version: loaded.version.clone(),
            },
            Err(e) => {
                tracing::warn!(error = %e, "the request does not fit the policy schema: denied");
                Verdict {
                    version: loaded.version.clone(),
                    ..Verdict::no_policy()
                }
            }
        }
    }
}

/// A rate, parsed from `N/s`, `N/min` or `N/h`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Messages per period.
    pub count: u32,
    /// The period.
    pub per: Duration,
}

impl Rate {
    /// Parses an annotation value; `None` if it is not a rate.
    pub fn parse(text: &str) -> Option<Self> {
        let (count, unit) = text.trim().split_once('/')?;
        let count: u32 = count.trim().parse().ok().filter(|n| *n > 0)?;
        let per = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            _ => return None,
        };
        Some(Self { count, per })
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: f64,
}

/// Token buckets per (policy, peer) for `@rate_limit` annotations, on a caller-given clock
/// (seconds as `f64`, monotonic).
#[derive(Debug, Default)]
pub struct RateLimits {
    buckets: Mutex<HashMap<(String, String), Bucket>>,
}

impl RateLimits {
    /// Takes one token from every rate-limited policy in `annotations` for `peer` at `now`;
    /// if any bucket is empty nothing is taken and the answer is how long to wait, and the
    /// policy.
    pub fn take(
        &self,
        annotations: &[Annotation],
        peer: &str,
        now: f64,
    ) -> Result<(), (Duration, String)> {
        let limits: Vec<(&str, Rate)> = annotations
            .iter()
            .filter(|a| a.key == "rate_limit")
            .filter_map(|a| {
                let rate = Rate::parse(&a.value);
                if rate.is_none() {
                    tracing::warn!(policy = %a.policy, value = %a.value,
                        "a rate_limit annotation is not N/s, N/min or N/h: ignored");
                }
                rate.map(|r| (a.policy.as_str(), r))
            })
            .collect();
        if limits.is_empty() {
            return Ok(());
        }
        let Ok(mut buckets) = self.buckets.lock() else {
            return Err((Duration::from_secs(1), "a lock was poisoned".into()));
        };
        if buckets.len() >= MAX_BUCKETS {
            buckets.clear();
        }
        // Refill each, then check all before taking any.
        let mut wait: Option<(Duration, String)> = None;
        for (policy, rate) in &limits {
            let per_second = f64::from(rate.count) / rate.per.as_secs_f64();
            let bucket = buckets
                .entry(((*policy).to_owned(), peer.to_owned()))
                .or_insert(Bucket {
                    tokens: f64::from(rate.count),
                    at: now,
                });
            let elapsed = (now - bucket.at).max(0.0);
            bucket.tokens = (bucket.tokens + elapsed * per_second).min(f64::from(rate.count));
            bucket.at = now;
            if bucket.tokens < 1.0 {
                let secs = (1.0 - bucket.tokens) / per_second;
                let candidate = (
                    Duration::from_secs_f64(secs.max(0.001)),
                    (*policy).to_owned(),
                );
                if wait.as_ref().is_none_or(|(w, _)| candidate.0 > *w) {
                    wait = Some(candidate);
                }
            }
        }
        if let Some(wait) = wait {
            return Err(wait);
        }
        for (policy, _) in &limits {
            if let Some(bucket) = buckets.get_mut(&((*policy).to_owned(), peer.to_owned())) {
                bucket.tokens -= 1.0;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(value: &str) -> Vec<Annotation> {
        vec![Annotation {
            policy: "p".into(),
            key: "rate_limit".into(),
            value: value.into(),
        }]
    }

    #[test]
    fn rates_parse_and_nonsense_does_not() {
        assert_eq!(
            Rate::parse("1000/min"),
            Some(Rate {
                count: 1000,
                per: Duration::from_secs(60)
            })
        );
        assert_eq!(Rate::parse("5/s").map(|r| r.count), Some(5));
        for bad in ["", "0/min", "-1/min", "10/fortnight", "ten/min", "10"] {
            assert_eq!(Rate::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_bucket_allows_its_rate_then_says_how_long_to_wait_and_refills() {
        let limits = RateLimits::default();
        let a = limit("3/min");
        for _ in 0..3 {
            limits.take(&a, "peer", 0.0).unwrap();
        }
        let (wait, policy) = limits.take(&a, "peer", 0.0).unwrap_err();
        assert_eq!(policy, "p");
        assert!((wait.as_secs_f64() - 20.0).abs() < 0.01, "{wait:?}");
        // Another peer has its own bucket.
        limits.take(&a, "other", 0.0).unwrap();
        // After 20 s one token is back, and only one.
        limits.take(&a, "peer", 20.0).unwrap();
        assert!(limits.take(&a, "peer", 20.0).is_err());
        // Unlimited policies take nothing.
        limits.take(&[], "peer", 20.0).unwrap();
    }
}
