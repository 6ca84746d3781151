//! The assessed figures as labelled series: per desk (the peer a call was offered to) and its
//! platform, calls offered, answered, answered within the service level and abandoned; per
//! linkage kind and direction, linkages by outcome. The labels come from the configuration
//! (peer names, their platforms), never from a number a caller chose, so the series stay few.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use super::histogram::Histogram;
use super::label_value;

/// How a call offered to a desk ended, for its figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeskOutcome {
    /// Answered `after_ms` after the call's start, `rang_ms` after the desk first rang (None:
    /// it answered without ringing).
    Answered { after_ms: u64, rang_ms: Option<u64> },
    /// The caller hung up before any desk answered.
    Abandoned,
    /// Busy, failed, refused, or ended by the gateway.
    NotAnswered,
}

#[derive(Debug, Default)]
struct DeskRow {
    offered: u64,
    answered: u64,
    answered_within: u64,
    abandoned: u64,
}

/// The labelled figures, and the service level they count against.
#[derive(Debug)]
pub(super) struct Figures {
    /// `hotline_desk_calls_answered_within_total`'s seconds (`[stats] service_level_secs`).
    service_level_ms: AtomicU64,
    /// By (desk, platform).
    desks: Mutex<BTreeMap<(String, String), DeskRow>>,
    /// By (kind, from platform, to platform or desk, outcome).
    linkages: Mutex<BTreeMap<(String, String, String, String), u64>>,
    /// By platform: the answered calls' time from their start, and from the desk's ringing.
    answer_times: Mutex<BTreeMap<String, (Histogram, Histogram)>>,
}

/// The buckets of the answer and ring times: the service-level marks, up to two minutes.
const ANSWER_BUCKETS: &[u32] = &[1, 2, 5, 10, 15, 20, 30, 45, 60, 120];

impl Default for Figures {
    fn default() -> Figures {
        Figures {
            service_level_ms: AtomicU64::new(20_000),
            desks: Mutex::default(),
            linkages: Mutex::default(),
            answer_times: Mutex::default(),
        }
    }
}

impl Figures {
    pub(super) fn set_service_level_secs(&self, secs: u64) {
        self.service_level_ms
            .store(secs.saturating_mul(1000), Ordering::Relaxed);
    }

    pub(super) fn count_desk_call(&self, desk: &str, platform: &str, outcome: DeskOutcome) {
        let within = self.service_level_ms.load(Ordering::Relaxed);
        let mut desks = self.desks.lock().unwrap_or_else(PoisonError::into_inner);
        let row = desks
            .entry((desk.to_string(), platform.to_string()))
            .or_default();
        row.offered += 1;
        match outcome {
            DeskOutcome::Answered { after_ms, rang_ms } => {
                row.answered += 1;
                if after_ms <= within {
                    row.answered_within += 1;
                }
                drop(desks);
                let mut times = self
                    .answer_times
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                let (answer, ring) = times.entry(platform.to_string()).or_insert_with(|| {
                    (
                        Histogram::new(ANSWER_BUCKETS),
                        Histogram::new(ANSWER_BUCKETS),
                    )
                });
                answer.observe_ms(after_ms);
                if let Some(rang) = rang_ms {
                    ring.observe_ms(rang);
                }
            }
            DeskOutcome::Abandoned => row.abandoned += 1,
            DeskOutcome::NotAnswered => {}
        }
    }

    pub(super) fn count_linkage(&self, kind: &str, from: &str, to: &str, outcome: &str) {
        let mut linkages = self.linkages.lock().unwrap_or_else(PoisonError::into_inner);
        *linkages
            .entry((
                kind.to_string(),
                from.to_string(),
                to.to_string(),
                outcome.to_string(),
            ))
            .or_default() += 1;
    }

    /// The series, with their HELP and TYPE lines (always, so a dashboard finds them before
    /// the first call).
    pub(super) fn render(&self, out: &mut String) {
        let within = self.service_level_ms.load(Ordering::Relaxed) / 1000;
        let desks = self.desks.lock().unwrap_or_else(PoisonError::into_inner);
        type Column = fn(&DeskRow) -> u64;
        let columns: [(&str, String, Column); 4] = [
            (
                "hotline_desk_calls_offered_total",
                "calls offered to the desk (the peer a call was sent to, or found full)".into(),
                |r| r.offered,
            ),
            (
                "hotline_desk_calls_answered_total",
                "calls the desk answered".into(),
                |r| r.answered,
            ),
            (
                "hotline_desk_calls_answered_within_total",
                format!("calls the desk answered within {within} s of their start (the service level, [stats] service_level_secs)"),
                |r| r.answered_within,
            ),
            (
                "hotline_desk_calls_abandoned_total",
                "calls offered to the desk whose caller hung up before any desk answered".into(),
                |r| r.abandoned,
            ),
        ];
        for (name, help, value) in columns {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for ((desk, platform), row) in desks.iter() {
                let _ = writeln!(
                    out,
                    "{name}{{peer=\"{}\",platform=\"{}\"}} {}",
                    label_value(desk),
                    label_value(platform),
                    value(row)
                );
            }
        }
        drop(desks);
        let times = self
            .answer_times
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (name, help, pick) in [
            (
                "hotline_desk_answer_seconds",
                "answered calls' time from their start to the desk's answer, by platform",
                0,
            ),
            (
                "hotline_desk_ring_seconds",
                "answered calls' time from the desk's first ringing to its answer, by platform",
                1,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            for (platform, (answer, ring)) in times.iter() {
                let histogram = if pick == 0 { answer } else { ring };
                let labels = format!("platform=\"{}\"", label_value(platform));
                histogram.render_series(name, &labels, out);
            }
        }
        drop(times);
        let linkages = self.linkages.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = writeln!(
            out,
            "# HELP hotline_linkages_total transfers and conference guests settled, by kind, the platform they left from, the platform (or desk) they went to, and outcome\n# TYPE hotline_linkages_total counter"
        );
        for ((kind, from, to, outcome), value) in linkages.iter() {
            let _ = writeln!(
                out,
                "hotline_linkages_total{{kind=\"{}\",from=\"{}\",to=\"{}\",outcome=\"{}\"}} {value}",
                label_value(kind),
                label_value(from),
                label_value(to),
                label_value(outcome)
            );
        }
    }
}
