//! The sidecar's metrics, as `GET /metrics` on the workload API shows them (Prometheus text
//! format 0.0.4): messages sent, received and refused (by side and reason), and the state
//! of its trust caches (CRL number and age, policy bundle age), decision spool and inbox.
//! Every label value is one of a fixed set, so the series are bounded.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

/// Counters of what the sidecar did.
#[derive(Debug, Default)]
pub struct Counters {
    sent: Mutex<BTreeMap<&'static str, u64>>,
    received: Mutex<BTreeMap<&'static str, u64>>,
    refused: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
}

/// The state shown beside the counters, read when `/metrics` is asked.
#[derive(Debug, Default)]
pub struct Gauges {
    /// The CRL in use.
    pub crl_number: Option<u64>,
    /// Seconds since the server last confirmed the CRL in use.
    pub crl_age: Option<i64>,
    /// Seconds since the server last confirmed the policy bundle in use.
    pub policy_age: Option<i64>,
    /// Whether every message is refused now (trust too old).
    pub refusing: bool,
    /// Decisions waiting for upload.
    pub spool_depth: usize,
    /// Decisions dropped from a full spool, ever.
    pub spool_dropped: u64,
    /// Messages waiting for the workload.
    pub inbox_depth: usize,
}

fn bump<K: Ord>(map: &Mutex<BTreeMap<K, u64>>, key: K) {
    if let Ok(mut map) = map.lock() {
        *map.entry(key).or_insert(0) += 1;
    }
}

/// The label for a transport's protocol: `https`, `mqtt` or `other`.
pub fn protocol_label(protocol: &str) -> &'static str {
    match protocol {
        "https" => "https",
        "mqtt" => "mqtt",
        _ => "other",
    }
}

impl Counters {
    /// A message left: `via` is `https`, `mqtt` or `sealed` (handed to the workload).
    pub fn sent(&self, via: &'static str) {
        bump(&self.sent, via);
    }

    /// A message was accepted, having arrived by `protocol`.
    pub fn received(&self, protocol: &str) {
        bump(&self.received, protocol_label(protocol));
    }

    /// A message was refused at `side` (`sender` or `receiver`) for `reason`.
    pub fn refused(&self, side: &'static str, reason: &'static str) {
        bump(&self.refused, (side, reason));
    }

    /// The exposition text of the counters and `gauges`.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, String)>| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        let counted = |map: &Mutex<BTreeMap<&'static str, u64>>, label: &str| {
            map.lock()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (format!("{{{label}=\"{k}\"}}"), v.to_string()))
                        .collect()
                })
                .unwrap_or_default()
        };
        family(
            "vouch_agent_messages_sent_total",
            "counter",
            "Messages sent (via https: delivered with a receipt; mqtt: taken by the broker; sealed: handed to the workload).",
            counted(&self.sent, "via"),
        );
        family(
            "vouch_agent_messages_received_total",
            "counter",
            "Messages that passed every check, by the protocol they arrived by.",
            counted(&self.received, "protocol"),
        );
        let refused = self
            .refused
            .lock()
            .map(|m| {
                m.iter()
                    .map(|((side, reason), v)| {
                        (
                            format!("{{side=\"{side}\",reason=\"{reason}\"}}"),
                            v.to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        family(
            "vouch_agent_messages_refused_total",
            "counter",
            "Messages refused, at the sender or the receiver, by reason.",
            refused,
        );
        let gauge =
            |value: Option<String>| value.map_or_else(Vec::new, |v| vec![(String::new(), v)]);
        family(
            "vouch_agent_crl_number",
            "gauge",
            "The number of the CRL in use.",
            gauge(gauges.crl_number.map(|n| n.to_string())),
        );
        family(
            "vouch_agent_crl_age_seconds",
            "gauge",
            "Seconds since the server last confirmed the CRL in use as current.",
            gauge(gauges.crl_age.map(|n| n.to_string())),
        );
        family(
            "vouch_agent_policy_age_seconds",
            "gauge",
            "Seconds since the server last confirmed the policy bundle in use.",
            gauge(gauges.policy_age.map(|n| n.to_string())),
        );
        family(
            "vouch_agent_refusing",
            "gauge",
            "1 while every message is refused (the CRL or the policy bundle is too old).",
            gauge(Some(u8::from(gauges.refusing).to_string())),
        );
        family(
            "vouch_agent_decision_spool_depth",
            "gauge",
            "Decisions waiting for upload to the server's decision log.",
            gauge(Some(gauges.spool_depth.to_string())),
        );
        family(
            "vouch_agent_decision_spool_dropped_total",
            "counter",
            "Decisions dropped because the spool was full (rule drop-oldest).",
            gauge(Some(gauges.spool_dropped.to_string())),
        );
        family(
            "vouch_agent_inbox_depth",
            "gauge",
            "Messages received and not yet read by the workload.",
            gauge(Some(gauges.inbox_depth.to_string())),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_render_with_their_labels() {
        let c = Counters::default();
        c.sent("https");
        c.sent("https");
        c.received("weird-protocol");
        c.refused("receiver", "replayed");
        let text = c.render(&Gauges {
            crl_number: Some(7),
            ..Gauges::default()
        });
        assert!(text.contains("vouch_agent_messages_sent_total{via=\"https\"} 2\n"));
        assert!(text.contains("vouch_agent_messages_received_total{protocol=\"other\"} 1\n"));
        assert!(text.contains(
            "vouch_agent_messages_refused_total{side=\"receiver\",reason=\"replayed\"} 1\n"
        ));
        assert!(text.contains("vouch_agent_crl_number 7\n"));
        // Unknown: the family is described, with no sample.
        assert!(text.contains("# TYPE vouch_agent_crl_age_seconds gauge\n"));
        assert!(!text
            .lines()
            .any(|l| l.starts_with("vouch_agent_crl_age_seconds")));
    }

    #[test]
    fn every_metric_is_documented_in_the_readme() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
            .unwrap_or_default();
        let text = Counters::default().render(&Gauges::default());
        let names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        assert!(names.len() >= 10, "{text}");
        for name in names {
            assert!(
                readme.contains(&format!("`{name}`")),
                "README.md does not document `{name}`"
            );
        }
    }
}
