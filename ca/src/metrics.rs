//! Prometheus metrics, kept in the server state (no global registry), served in both
//! exposition formats: OpenMetrics 1.0 and the Prometheus text format 0.0.4, chosen by the
//! scraper's `Accept` header.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// Label of an outcome: `issued` or the problem code of the refusal.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OutcomeLabels {
    /// The outcome.
    pub outcome: String,
}

/// Label of a TLS handshake: `full` or `resumed`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct KindLabels {
    /// The kind.
    pub kind: &'static str,
}

/// Counts the TLS handshakes the listener completes, by kind; clones count into the same
/// family (the listener holds one).
#[derive(Clone, Debug, Default)]
pub struct HandshakeCounter(Family<KindLabels, Counter>);

impl HandshakeCounter {
    /// Counts a completed handshake: `resumed` from a session ticket, or full.
    pub fn count(&self, resumed: bool) {
        let kind = if resumed { "resumed" } else { "full" };
        self.0.get_or_create(&KindLabels { kind }).inc();
    }
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
    /// TLS handshakes completed.
    pub handshakes: HandshakeCounter,
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
        let handshakes = HandshakeCounter::default();
        registry.register(
            "tls_handshakes",
            "TLS handshakes completed, by `kind` (`full`, `resumed` from a session ticket)",
            handshakes.0.clone(),
        );
        Self {
            handshakes,
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
    pub(crate) fn shadow_difference(&self) {
        self.shadow_differences.inc();
    }

    /// The OpenMetrics 1.0 text exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    /// The exposition in `format`.
    pub(crate) fn encode_as(&self, format: ExpositionFormat) -> Result<String, std::fmt::Error> {
        let openmetrics = self.encode()?;
        Ok(match format {
            ExpositionFormat::OpenMetrics => openmetrics,
            ExpositionFormat::PrometheusText => prometheus_text(&openmetrics),
        })
    }
}

/// The two text formats a Prometheus scraper may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExpositionFormat {
    /// `application/openmetrics-text; version=1.0.0`.
    OpenMetrics,
    /// `text/plain; version=0.0.4`: what Prometheus reads from a target that does not
    /// negotiate, and what `promtool check metrics` checks.
    PrometheusText,
}

impl ExpositionFormat {
    /// The `Content-Type` of an answer in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Self::PrometheusText => "text/plain; version=0.0.4; charset=utf-8",
        }
    }

    /// The format an `Accept` header prefers (RFC 9110 12.5.1): OpenMetrics when it is
    /// named with a higher quality than `text/plain`, the text format otherwise (also without
    /// a header, or when neither is named: the text format is the one every scraper reads).
    pub fn negotiate(accept: Option<&str>) -> Self {
        let (mut openmetrics, mut text) = (0.0f32, 0.0f32);
        for range in accept.unwrap_or("").split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("").to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.strip_prefix("q=").or_else(|| p.strip_prefix("Q=")))
                .find_map(|q| q.parse::<f32>().ok())
                .unwrap_or(1.0)
                .clamp(0.0, 1.0);
            match media.as_str() {
                "application/openmetrics-text" => openmetrics = openmetrics.max(q),
                "text/plain" | "text/*" => text = text.max(q),
                _ => {}
            }
        }
        if openmetrics > 0.0 && openmetrics > text {
            Self::OpenMetrics
        } else {
            Self::PrometheusText
        }
    }
}

/// Rewrites an OpenMetrics exposition of counters and gauges as Prometheus text 0.0.4: a
/// counter family `x` has samples `x_total` in both, but in 0.0.4 its `# HELP` and `# TYPE`
/// name the sample (`x_total`); 0.0.4 has no `# UNIT` and no `# EOF`, and escapes no quotes
/// in help text.
fn prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let family_name = |name: &str| {
        if counters.contains(name) {
            format!("{name}_total")
        } else {
            name.to_owned()
        }
    };
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            let help = help.replace("\\\"", "\"");
            out.push_str(&format!("# HELP {} {help}\n", family_name(name)));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            out.push_str(&format!("# TYPE {} {kind}\n", family_name(name)));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_follows_the_scrapers_preference() {
        use ExpositionFormat::*;
        assert_eq!(ExpositionFormat::negotiate(None), PrometheusText);
        assert_eq!(ExpositionFormat::negotiate(Some("*/*")), PrometheusText);
        assert_eq!(
            ExpositionFormat::negotiate(Some("text/plain;version=0.0.4")),
            PrometheusText
        );
        assert_eq!(
            ExpositionFormat::negotiate(Some("application/openmetrics-text; version=1.0.0")),
            OpenMetrics
        );
        // Prometheus 2.x's own scrape header.
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(ExpositionFormat::negotiate(Some(prometheus)), OpenMetrics);
        assert_eq!(
            ExpositionFormat::negotiate(Some("application/openmetrics-text;q=0.2, text/plain")),
            PrometheusText
        );
        assert_eq!(
            ExpositionFormat::negotiate(Some("application/openmetrics-text;q=0")),
            PrometheusText
        );
    }

    #[test]
    fn text_format_names_counters_by_their_samples() {
        let metrics = Metrics::new();
        metrics.revocations.inc();
        metrics.enrollment("issued");
        let text = metrics.encode_as(ExpositionFormat::PrometheusText).unwrap();
        assert!(
            text.contains("# HELP vouch_revocations_total Devices revoked.\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE vouch_revocations_total counter\n"),
            "{text}"
        );
        assert!(text.contains("vouch_revocations_total 1\n"), "{text}");
        assert!(
            text.contains("vouch_enrollments_total{outcome=\"issued\"} 1\n"),
            "{text}"
        );
        assert!(!text.contains("# EOF"), "{text}");
        let om = metrics.encode_as(ExpositionFormat::OpenMetrics).unwrap();
        assert!(om.contains("# TYPE vouch_revocations counter\n"), "{om}");
        assert!(om.ends_with("# EOF\n"), "{om}");
    }
}
