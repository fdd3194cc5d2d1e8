//! Turn the cores' samples into one Prometheus exposition, encoded by the `prometheus-client`
//! crate. Pure: samples in, text out (no I/O, no clock).
//!
//! Counters are summed over the cores (each core's only grow, so the sums only grow); gauges
//! keep a `core` label; histograms are merged bucket by bucket. A fresh registry is built per
//! scrape: the values are the cores' own, copied, so nothing here accumulates or resets.
use super::local::CoreSample;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use ringpost_spool::HistogramSnapshot;

/// The content type of [`render`]'s classic text (what a client gets unless it asks for
/// OpenMetrics).
pub const TEXT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// The content type of [`render_openmetrics`].
pub const OPENMETRICS_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(&'static str, String)>;
/// One gauge series of a core: extra label (key, value; empty key: none) and where its value is.
type Series = (&'static str, &'static str, fn(&CoreSample) -> u64);

/// A histogram merged from the cores' snapshots, values scaled by `1/divisor` (µs → s).
#[derive(Debug)]
struct Merged {
    snap: HistogramSnapshot,
    divisor: f64,
}

impl EncodeMetric for Merged {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let bounds = self.snap.bounds.iter().map(|b| *b as f64 / self.divisor).chain(std::iter::once(f64::INFINITY));
        let buckets: Vec<(f64, u64)> = bounds.zip(self.snap.counts.iter().copied()).collect();
        encoder.encode_histogram::<NoLabelSet>(self.snap.sum as f64 / self.divisor, self.snap.count(), &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

fn merged(samples: &[CoreSample], pick: fn(&CoreSample) -> &HistogramSnapshot, divisor: f64) -> Merged {
    let mut snap = HistogramSnapshot::default();
    for s in samples {
        snap.merge(pick(s));
    }
    Merged { snap, divisor }
}

fn counter(reg: &mut Registry, name: &str, help: &str, samples: &[CoreSample], pick: fn(&CoreSample) -> u64) {
    reg.register(name, help, ConstCounter::new(samples.iter().map(pick).sum::<u64>()));
}

/// A counter family labelled by bounce category, summed over cores.
fn by_category(reg: &mut Registry, name: &str, help: &str, samples: &[CoreSample], pick: fn(&CoreSample) -> &Vec<(&'static str, u64)>) {
    let family = Family::<Labels, Counter>::default();
    for s in samples {
        for (category, n) in pick(s) {
            family.get_or_create(&vec![("category", category.to_string())]).inc_by(*n);
        }
    }
    reg.register(name, help, family);
}

/// A gauge family with one series per core (and per extra label of `series`).
fn per_core(reg: &mut Registry, name: &str, help: &str, samples: &[CoreSample], series: &[Series]) {
    let family = Family::<Labels, Gauge>::default();
    for s in samples {
        for (key, value, pick) in series {
            let mut labels = vec![("core", s.core.to_string())];
            if !key.is_empty() {
                labels.push((*key, value.to_string()));
            }
            family.get_or_create(&labels).set(pick(s) as i64);
        }
    }
    reg.register(name, help, family);
}

/// Queue depth of the `top` largest destinations of all cores, and the rest as `other`.
fn destinations(reg: &mut Registry, samples: &[CoreSample], top: usize) {
    let all = samples.iter().flat_map(|s| s.destinations.iter().cloned()).collect();
    let shown = super::local::top_destinations(all, top);
    let family = Family::<Labels, Gauge>::default();
    let mut other = [
        samples.iter().map(|s| s.queue_ready).sum::<u64>(),
        samples.iter().map(|s| s.queue_waiting).sum(),
        samples.iter().map(|s| s.queue_in_flight).sum(),
    ];
    let states = ["ready", "waiting", "in_flight"];
    for d in &shown {
        for (i, v) in [d.ready, d.waiting, d.in_flight].into_iter().enumerate() {
            family.get_or_create(&vec![("destination", d.domain.clone()), ("state", states[i].to_string())]).set(v as i64);
            other[i] = other[i].saturating_sub(v);
        }
    }
    for (state, v) in states.into_iter().zip(other) {
        family.get_or_create(&vec![("destination", "other".to_string()), ("state", state.to_string())]).set(v as i64);
    }
    reg.register(
        "ringpost_destination_recipients",
        "Recipients queued for the largest destinations, by state ([metrics] destinations_top); the rest under destination=other",
        family,
    );
}

/// The registry of one scrape.
fn registry(samples: &[CoreSample], uptime_s: u64, top: usize) -> Registry {
    let mut r = Registry::default();
    counter(
        &mut r,
        "ringpost_messages_received",
        "Messages answered 250 over SMTP (Reception lines of the delivery log with a client)",
        samples,
        |s| s.received_smtp,
    );
    counter(
        &mut r,
        "ringpost_dsns_generated",
        "Delivery status notifications generated and queued (Reception lines of the delivery log without a client)",
        samples,
        |s| s.received_dsn,
    );
    counter(&mut r, "ringpost_recipients_delivered", "Recipients delivered (Delivery lines of the delivery log)", samples, |s| s.delivered);
    by_category(&mut r, "ringpost_recipients_deferred", "Recipient attempts deferred, by bounce category (TransientFailure lines)", samples, |s| {
        &s.deferred
    });
    by_category(&mut r, "ringpost_recipients_bounced", "Recipients bounced, by bounce category (Bounce lines)", samples, |s| &s.bounced);
    counter(&mut r, "ringpost_recipients_expired", "Recipients expired after max_age (Expiration lines)", samples, |s| {
        s.expired.iter().map(|(_, n)| n).sum()
    });
    per_core(
        &mut r,
        "ringpost_queue_recipients",
        "Recipients queued, by core and state",
        samples,
        &[("state", "ready", |s| s.queue_ready), ("state", "waiting", |s| s.queue_waiting), ("state", "in_flight", |s| s.queue_in_flight)],
    );
    per_core(
        &mut r,
        "ringpost_connections",
        "Open SMTP connections, by core and direction",
        samples,
        &[("direction", "in", |s| s.connections_in), ("direction", "out", |s| s.connections_out)],
    );
    per_core(&mut r, "ringpost_spool_bytes", "Disk held by spool segments, by core", samples, &[("", "", |s| s.spool_bytes)]);
    per_core(&mut r, "ringpost_spool_segments", "Spool segment files, by core", samples, &[("", "", |s| s.spool_segments)]);
    counter(&mut r, "ringpost_commit_rounds", "Group-commit rounds of the spool", samples, |s| s.commit_rounds);
    r.register(
        "ringpost_commit_round_records",
        "Records made durable per group-commit round (the batch size)",
        merged(samples, |s| &s.round_records, 1.0),
    );
    r.register("ringpost_fsync_duration_seconds", "Time of each commit round's fdatasync", merged(samples, |s| &s.fsync_us, 1e6));
    r.register(
        "ringpost_accept_to_250_seconds",
        "From a message's last byte to its 250 (the durable commit), per message accepted over SMTP",
        merged(samples, |s| &s.accept_us, 1e6),
    );
    counter(&mut r, "ringpost_dkim_signed", "Messages signed with DKIM (once per message: in the session for Ed25519 alone, after the 250 with RSA; again at recovery only if the spool lost the lines)", samples, |s| s.dkim_signed);
    per_core(
        &mut r,
        "ringpost_dkim_signing",
        "Messages answered 250 and waiting for their DKIM signatures, by core",
        samples,
        &[("", "", |s| s.dkim_signing)],
    );
    destinations(&mut r, samples, top);
    counter(&mut r, "ringpost_dns_queries", "DNS lookups that missed the cache and asked a nameserver", samples, |s| s.dns_queries);
    counter(&mut r, "ringpost_dns_cache_hits", "DNS lookups answered from the cache", samples, |s| s.dns_cache_hits);
    r.register("ringpost_uptime_seconds", "Seconds since the daemon started", prometheus_client::metrics::gauge::ConstGauge::new(uptime_s as i64));
    r.register("ringpost_cores", "Cores answering this scrape", prometheus_client::metrics::gauge::ConstGauge::new(samples.len() as i64));
    r
}

/// The exposition in the OpenMetrics text format (what `prometheus-client` writes).
pub fn render_openmetrics(samples: &[CoreSample], uptime_s: u64, top: usize) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry(samples, uptime_s, top)).expect("writing to a String cannot fail");
    out
}

/// The exposition in the classic Prometheus text format 0.0.4: OpenMetrics names a counter's
/// family without `_total` in `# HELP`/`# TYPE` and ends with `# EOF`; 0.0.4 names it with
/// the suffix its samples carry and has no end marker.
pub fn render(samples: &[CoreSample], uptime_s: u64, top: usize) -> String {
    to_text_004(&render_openmetrics(samples, uptime_s, top))
}

fn to_text_004(openmetrics: &str) -> String {
    let counters: Vec<&str> = openmetrics.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter")).collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines().filter(|l| *l != "# EOF") {
        let meta = ["# HELP ", "# TYPE "].into_iter().find_map(|p| Some((p, line.strip_prefix(p)?)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let suffix = if counters.contains(&name) { "_total" } else { "" };
                out.push_str(format!("{prefix}{name}{suffix} {tail}").trim_end_matches(' '));
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dests(core: usize) -> Vec<crate::metrics::local::DestDepth> {
        let d = |name: &str, ready| crate::metrics::local::DestDepth { domain: format!("{name}{core}.test"), ready, ..Default::default() };
        vec![d("a", 3), d("b", 1)]
    }

    fn sample(core: usize) -> CoreSample {
        let h = ringpost_spool::FixedHistogram::new(&super::super::local::ACCEPT_US_BOUNDS);
        h.record(300);
        h.record(20_000_000);
        CoreSample {
            core,
            received_smtp: 2,
            delivered: 3,
            bounced: vec![("bad-mailbox", 1)],
            queue_ready: 4,
            accept_us: h.snapshot(),
            destinations: dests(core),
            ..Default::default()
        }
    }

    #[test]
    fn counters_sum_gauges_keep_the_core_histograms_merge() {
        let text = render(&[sample(0), sample(1)], 7, 3);
        for line in [
            "# TYPE ringpost_messages_received_total counter",
            "ringpost_messages_received_total 4",
            "ringpost_recipients_delivered_total 6",
            "ringpost_recipients_bounced_total{category=\"bad-mailbox\"} 2",
            "ringpost_queue_recipients{core=\"1\",state=\"ready\"} 4",
            "ringpost_accept_to_250_seconds_count 4",
            "ringpost_accept_to_250_seconds_bucket{le=\"0.0005\"} 2",
            "ringpost_accept_to_250_seconds_bucket{le=\"+Inf\"} 4",
            "ringpost_uptime_seconds 7",
            "ringpost_destination_recipients{destination=\"a0.test\",state=\"ready\"} 3",
            "ringpost_destination_recipients{destination=\"a1.test\",state=\"ready\"} 3",
            "ringpost_destination_recipients{destination=\"b0.test\",state=\"ready\"} 1",
            "ringpost_destination_recipients{destination=\"other\",state=\"ready\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(!text.contains("# EOF"));
        assert!(!text.contains(".."), "prometheus-client ends each help with a period of its own");
        assert!(!text.contains("b1.test"), "only the top 3");
        assert!(render_openmetrics(&[sample(0)], 1, 0).ends_with("# EOF\n"));
    }
}
