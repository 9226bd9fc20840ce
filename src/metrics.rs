//! Request figures where they arise, and their Prometheus text rendering.
//!
//! [`Counters`] is what a proxy session or a stdio host bumps per answered request: a few
//! relaxed atomic adds, no lock, no allocation, so the hot path does not notice it. A
//! [`Totals`] is a snapshot of them (cumulative since the counting process started); the
//! manager adds up the snapshots it is sent or fetches, and works out rates and percentiles
//! from the difference of two of them.
//!
//! [`Exposition`] writes the Prometheus text format (version 0.0.4): `# HELP` and `# TYPE`
//! once per family, label values escaped, histograms as cumulative `_bucket{le=…}` lines with
//! `_sum` and `_count`. It is written by hand rather than through `prometheus-client` because
//! the figures are snapshots of state other tasks own (actors, host reports, proxy reports),
//! not metric objects living in a registry; the tests parse its output with the Python
//! reference parser.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Upper bounds of the latency buckets, in microseconds (the last bucket is everything above).
pub const LATENCY_BOUNDS_US: [u64; 16] = [
    250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000, 30_000_000,
];
const BUCKETS: usize = LATENCY_BOUNDS_US.len() + 1;

/// Answered requests, errors among them, and how long they took.
pub struct Counters {
    requests: AtomicU64,
    errors: AtomicU64,
    latency_sum_us: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
}

impl Default for Counters {
    fn default() -> Counters {
        Counters::new()
    }
}

impl Counters {
    pub const fn new() -> Counters {
        #[allow(clippy::declare_interior_mutable_const)] // only copied into the array below
        const ZERO: AtomicU64 = AtomicU64::new(0);
        Counters {
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency_sum_us: AtomicU64::new(0),
            buckets: [ZERO; BUCKETS],
        }
    }

    /// One request answered after `latency`; `error` when the answer is a JSON-RPC error.
    pub fn record(&self, latency: Duration, error: bool) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BOUNDS_US.partition_point(|&bound| bound < us);
        self.requests.fetch_add(1, Ordering::Relaxed);
        if error {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.latency_sum_us.fetch_add(us, Ordering::Relaxed);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Totals {
        Totals {
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            latency_sum_us: self.latency_sum_us.load(Ordering::Relaxed),
            buckets: self
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
        }
    }
}

/// A snapshot of [`Counters`] (or a sum or difference of snapshots).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub requests: u64,
    pub errors: u64,
    pub latency_sum_us: u64,
    /// Requests per latency bucket (not cumulative), [`LATENCY_BOUNDS_US`] plus one.
    pub buckets: Vec<u64>,
}

impl Totals {
    pub fn add(&mut self, other: &Totals) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.latency_sum_us += other.latency_sum_us;
        if self.buckets.len() < other.buckets.len() {
            self.buckets.resize(other.buckets.len(), 0);
        }
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            *mine += theirs;
        }
    }

    /// What happened between `earlier` and `self` (zero where a counter went back).
    pub fn since(&self, earlier: &Totals) -> Totals {
        Totals {
            requests: self.requests.saturating_sub(earlier.requests),
            errors: self.errors.saturating_sub(earlier.errors),
            latency_sum_us: self.latency_sum_us.saturating_sub(earlier.latency_sum_us),
            buckets: self
                .buckets
                .iter()
                .enumerate()
                .map(|(i, n)| n.saturating_sub(earlier.buckets.get(i).copied().unwrap_or(0)))
                .collect(),
        }
    }

    /// The latency below which a fraction `q` of the requests were answered, in milliseconds:
    /// the upper bound of the bucket it falls in. `None` without requests; above the last
    /// bound, that bound.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let count: u64 = self.buckets.iter().sum();
        if count == 0 {
            return None;
        }
        let rank = (q * count as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let bound = LATENCY_BOUNDS_US
                    .get(i)
                    .or(LATENCY_BOUNDS_US.last())
                    .copied()
                    .unwrap_or(0);
                return Some(bound as f64 / 1000.0);
            }
        }
        None
    }
}

/// A Prometheus text exposition being written.
#[derive(Default)]
pub struct Exposition {
    text: String,
}

pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Exposition {
    pub fn new() -> Exposition {
        Exposition::default()
    }

    /// Starts a family: its `# HELP` and `# TYPE` lines. Its samples follow.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(name);
        write_labels(&mut self.text, labels);
        let _ = writeln!(self.text, " {}", number(value));
    }

    /// The `_bucket`, `_sum` (seconds) and `_count` lines of a latency histogram.
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], totals: &Totals) {
        let mut cumulative = 0;
        for (i, n) in totals.buckets.iter().enumerate() {
            cumulative += n;
            let le = match LATENCY_BOUNDS_US.get(i) {
                Some(us) => number(*us as f64 / 1_000_000.0),
                None => "+Inf".to_owned(),
            };
            let mut with_le = labels.to_vec();
            with_le.push(("le", &le));
            self.sample(&format!("{name}_bucket"), &with_le, cumulative as f64);
        }
        if totals.buckets.len() <= LATENCY_BOUNDS_US.len() {
            let mut with_le = labels.to_vec();
            with_le.push(("le", "+Inf"));
            self.sample(&format!("{name}_bucket"), &with_le, cumulative as f64);
        }
        self.sample(
            &format!("{name}_sum"),
            labels,
            totals.latency_sum_us as f64 / 1_000_000.0,
        );
        self.sample(&format!("{name}_count"), labels, cumulative as f64);
    }

    pub fn finish(self) -> String {
        self.text
    }
}

fn write_labels(text: &mut String, labels: &[(&str, &str)]) {
    if labels.is_empty() {
        return;
    }
    text.push('{');
    for (i, (key, value)) in labels.iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        text.push_str(key);
        text.push_str("=\"");
        for c in value.chars() {
            match c {
                '\\' => text.push_str("\\\\"),
                '"' => text.push_str("\\\""),
                '\n' => text.push_str("\\n"),
                c => text.push(c),
            }
        }
        text.push('"');
    }
    text.push('}');
}

fn number(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_owned()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        format!("{value}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_the_buckets() {
        let counters = Counters::new();
        for _ in 0..98 {
            counters.record(Duration::from_micros(300), false);
        }
        counters.record(Duration::from_millis(40), true);
        counters.record(Duration::from_secs(60), false);
        let totals = counters.snapshot();
        assert_eq!((totals.requests, totals.errors), (100, 1));
        assert_eq!(totals.quantile_ms(0.5), Some(0.5));
        assert_eq!(totals.quantile_ms(0.99), Some(50.0));
        assert_eq!(totals.quantile_ms(1.0), Some(30_000.0));
        assert_eq!(Totals::default().quantile_ms(0.5), None);
        let later = counters.snapshot();
        assert_eq!(later.since(&totals).requests, 0);
    }

    #[test]
    fn labels_are_escaped_and_histograms_cumulative() {
        let counters = Counters::new();
        counters.record(Duration::from_micros(100), false);
        counters.record(Duration::from_millis(2), false);
        let mut out = Exposition::new();
        out.family("x_seconds", Kind::Histogram, "a\nhelp");
        out.histogram("x_seconds", &[("daemon", "a\"b\\c")], &counters.snapshot());
        let text = out.finish();
        assert!(text.starts_with("# HELP x_seconds a\\nhelp\n# TYPE x_seconds histogram\n"));
        assert!(text.contains("x_seconds_bucket{daemon=\"a\\\"b\\\\c\",le=\"0.00025\"} 1\n"));
        assert!(text.contains("x_seconds_bucket{daemon=\"a\\\"b\\\\c\",le=\"0.0025\"} 2\n"));
        assert!(text.contains("le=\"+Inf\"} 2\n"));
        assert!(text.contains("x_seconds_count{daemon=\"a\\\"b\\\\c\"} 2\n"));
    }
}
