//! Prometheus metrics, kept in the server state (no global registry).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// Label of an outcome: `issued` or the problem code of the refusal.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// The outcome.
    pub outcome: String,
}

/// The server's metrics.
pub struct Metrics {
    registry: Registry,
    enrollments: Family<OutcomeLabels, Counter>,
    renewals: Family<OutcomeLabels, Counter>,
    /// Devices revoked.
    pub revocations: Counter,
    /// Bootstrap tokens created.
    pub tokens_created: Counter,
    decisions: Family<OutcomeLabels, Counter>,
    shadow_differences: Counter,
    attestations: Family<OutcomeLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("vouch");
        let enrollments = Family::<OutcomeLabels, Counter>::default();
        let renewals = Family::<OutcomeLabels, Counter>::default();
        let revocations = Counter::default();
        let tokens_created = Counter::default();
        registry.register(
            "enrollments",
            "Enrollment attempts by outcome",
            enrollments.clone(),
        );
        registry.register("renewals", "Renewal attempts by outcome", renewals.clone());
        registry.register("revocations", "Devices revoked", revocations.clone());
        registry.register(
            "bootstrap_tokens_created",
            "Bootstrap tokens created",
            tokens_created.clone(),
        );
        let decisions = Family::<OutcomeLabels, Counter>::default();
        let shadow_differences = Counter::default();
        registry.register(
            "policy_decisions",
            "Policy decisions answered (and logged), by outcome (`allow`, `deny`)",
            decisions.clone(),
        );
        registry.register(
            "policy_shadow_differences",
            "Decisions where the shadow policy set decided otherwise than the active one",
            shadow_differences.clone(),
        );
        let attestations = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "attestations",
            "Quotes verified, by outcome (`pass`, `fail`)",
            attestations.clone(),
        );
        Self {
            registry,
            decisions,
            shadow_differences,
            attestations,
            enrollments,
            renewals,
            revocations,
            tokens_created,
        }
    }

    /// Counts an enrollment attempt.
    pub fn enrollment(&self, outcome: &str) {
        self.enrollments
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Counts a verified quote.
    pub fn attestation(&self, outcome: &str) {
        self.attestations
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Counts a renewal attempt.
    pub fn renewal(&self, outcome: &str) {
        self.renewals
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Counts a decision answered.
    pub fn decision(&self, outcome: &str) {
        self.decisions
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Counts a decision the shadow set decided otherwise.
    pub fn shadow_difference(&self) {
        self.shadow_differences.inc();
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}
