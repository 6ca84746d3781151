//! A Prometheus histogram of durations, lock-free: one counter per bucket (not cumulative
//! until rendered), the count and the sum in milliseconds.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Durations observed into fixed buckets (upper bounds in seconds).
#[derive(Debug)]
pub(super) struct Histogram {
    bounds_secs: &'static [u32],
    /// One per bound, then the one above every bound (`+Inf`).
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum_ms: AtomicU64,
}

impl Histogram {
    pub(super) fn new(bounds_secs: &'static [u32]) -> Histogram {
        Histogram {
            bounds_secs,
            buckets: (0..=bounds_secs.len()).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_ms: AtomicU64::new(0),
        }
    }

    pub(super) fn observe_ms(&self, ms: u64) {
        let index = self
            .bounds_secs
            .iter()
            .position(|bound| ms <= u64::from(*bound) * 1000)
            .unwrap_or(self.bounds_secs.len());
        if let Some(bucket) = self.buckets.get(index) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_ms.fetch_add(ms, Ordering::Relaxed);
    }

    /// The exposition of `name` (in seconds): cumulative buckets, `_sum`, `_count`.
    pub(super) fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        self.render_series(name, "", out);
    }

    /// The series of `name` with `labels` (`key="value",...`, escaped; empty for none), without
    /// the HELP and TYPE lines (one histogram of several label sets writes those once).
    pub(super) fn render_series(&self, name: &str, labels: &str, out: &mut String) {
        let (with, braces) = if labels.is_empty() {
            (String::new(), String::new())
        } else {
            (format!("{labels},"), format!("{{{labels}}}"))
        };
        let mut cumulative = 0;
        for (index, bucket) in self.buckets.iter().enumerate() {
            cumulative += bucket.load(Ordering::Relaxed);
            match self.bounds_secs.get(index) {
                Some(bound) => {
                    let _ = writeln!(out, "{name}_bucket{{{with}le=\"{bound}\"}} {cumulative}");
                }
                None => {
                    let _ = writeln!(out, "{name}_bucket{{{with}le=\"+Inf\"}} {cumulative}");
                }
            }
        }
        let sum = self.sum_ms.load(Ordering::Relaxed) as f64 / 1000.0;
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "{name}_sum{braces} {sum}\n{name}_count{braces} {count}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_labelled_series_carries_its_labels_on_every_line() {
        let histogram = Histogram::new(&[1, 5]);
        histogram.observe_ms(3000);
        let mut out = String::new();
        histogram.render_series("answer_seconds", "platform=\"110\"", &mut out);
        assert_eq!(
            out,
            "answer_seconds_bucket{platform=\"110\",le=\"1\"} 0\n\
             answer_seconds_bucket{platform=\"110\",le=\"5\"} 1\n\
             answer_seconds_bucket{platform=\"110\",le=\"+Inf\"} 1\n\
             answer_seconds_sum{platform=\"110\"} 3\n\
             answer_seconds_count{platform=\"110\"} 1\n"
        );
    }

    #[test]
    fn observations_land_in_cumulative_buckets_with_sum_and_count() {
        let histogram = Histogram::new(&[1, 5, 30]);
        for ms in [200, 1000, 4000, 29_999, 60_000] {
            histogram.observe_ms(ms);
        }
        let mut out = String::new();
        histogram.render("wait_seconds", "waits", &mut out);
        for line in [
            "# TYPE wait_seconds histogram",
            "wait_seconds_bucket{le=\"1\"} 2",
            "wait_seconds_bucket{le=\"5\"} 3",
            "wait_seconds_bucket{le=\"30\"} 4",
            "wait_seconds_bucket{le=\"+Inf\"} 5",
            "wait_seconds_sum 95.199",
            "wait_seconds_count 5",
        ] {
            assert!(out.lines().any(|l| l == line), "{line} in\n{out}");
        }
    }
}
