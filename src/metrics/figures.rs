//! The assessed figures as labelled series: per desk (the peer a call was offered to) and its
//! platform, and per route, calls offered, answered, answered within the service level and
//! abandoned; per platform, the times to answer and to abandon; per
//! linkage kind and direction, linkages by outcome. The labels come from the configuration
//! (peer names, their platforms, route numbers), never from a number a caller chose, so the
//! series stay few.

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
    /// The caller hung up before any desk answered, `after_ms` after the call's start.
    Abandoned { after_ms: u64 },
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

impl DeskRow {
    fn count(&mut self, outcome: DeskOutcome, within_ms: u64) {
        self.offered += 1;
        match outcome {
            DeskOutcome::Answered { after_ms, .. } => {
                self.answered += 1;
                if after_ms <= within_ms {
                    self.answered_within += 1;
                }
            }
            DeskOutcome::Abandoned { .. } => self.abandoned += 1,
            DeskOutcome::NotAnswered => {}
        }
    }
}

/// The labelled figures, and the service level they count against.
#[derive(Debug)]
pub(super) struct Figures {
    /// `hotline_desk_calls_answered_within_total`'s seconds (`[stats] service_level_secs`).
    service_level_ms: AtomicU64,
    /// By (desk, platform).
    desks: Mutex<BTreeMap<(String, String), DeskRow>>,
    /// By route (as configured: `12345`, `_1[12]X`).
    routes: Mutex<BTreeMap<String, DeskRow>>,
    /// By (kind, from platform, to platform or desk, outcome).
    linkages: Mutex<BTreeMap<(String, String, String, String), u64>>,
    /// By (kind, from platform, to platform or desk): the connected linkages' time from the
    /// request to the target's answer.
    linkage_answers: Mutex<BTreeMap<(String, String, String), Histogram>>,
    /// By platform: the calls' times.
    times: Mutex<BTreeMap<String, PlatformTimes>>,
}

/// One platform's histograms.
#[derive(Debug)]
struct PlatformTimes {
    /// Answered calls, from their start to the answer.
    answer: Histogram,
    /// Answered calls, from the desk's first ringing to the answer.
    ring: Histogram,
    /// Abandoned calls, from their start to the caller's hanging up.
    abandon: Histogram,
}

impl Default for PlatformTimes {
    fn default() -> PlatformTimes {
        PlatformTimes {
            answer: Histogram::new(ANSWER_BUCKETS),
            ring: Histogram::new(ANSWER_BUCKETS),
            abandon: Histogram::new(ABANDON_BUCKETS),
        }
    }
}

/// The buckets of the answer and ring times: the service-level marks, up to two minutes.
const ANSWER_BUCKETS: &[u32] = &[1, 2, 5, 10, 15, 20, 30, 45, 60, 120];
/// The waits before abandoning: those marks, then a queue's longer waits.
const ABANDON_BUCKETS: &[u32] = &[1, 2, 5, 10, 15, 20, 30, 45, 60, 120, 300, 600, 1800];

impl Default for Figures {
    fn default() -> Figures {
        Figures {
            service_level_ms: AtomicU64::new(20_000),
            desks: Mutex::default(),
            routes: Mutex::default(),
            linkages: Mutex::default(),
            linkage_answers: Mutex::default(),
            times: Mutex::default(),
        }
    }
}

impl Figures {
    pub(super) fn set_service_level_secs(&self, secs: u64) {
        self.service_level_ms
            .store(secs.saturating_mul(1000), Ordering::Relaxed);
    }

    pub(super) fn count_desk_call(
        &self,
        (desk, platform, route): (&str, &str, &str),
        outcome: DeskOutcome,
    ) {
        let within = self.service_level_ms.load(Ordering::Relaxed);
        {
            let mut routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
            routes
                .entry(route.to_string())
                .or_default()
                .count(outcome, within);
        }
        let mut desks = self.desks.lock().unwrap_or_else(PoisonError::into_inner);
        desks
            .entry((desk.to_string(), platform.to_string()))
            .or_default()
            .count(outcome, within);
        drop(desks);
        match outcome {
            DeskOutcome::Answered { after_ms, rang_ms } => self.observe(platform, |times| {
                times.answer.observe_ms(after_ms);
                if let Some(rang) = rang_ms {
                    times.ring.observe_ms(rang);
                }
            }),
            DeskOutcome::Abandoned { after_ms } => {
                self.observe(platform, |times| times.abandon.observe_ms(after_ms));
            }
            DeskOutcome::NotAnswered => {}
        }
    }

    fn observe(&self, platform: &str, observe: impl FnOnce(&mut PlatformTimes)) {
        let mut times = self.times.lock().unwrap_or_else(PoisonError::into_inner);
        observe(times.entry(platform.to_string()).or_default());
    }

    pub(super) fn count_linkage(
        &self,
        (kind, from, to): (&str, &str, &str),
        outcome: &str,
        answered_after_ms: Option<u64>,
    ) {
        let mut linkages = self.linkages.lock().unwrap_or_else(PoisonError::into_inner);
        *linkages
            .entry((
                kind.to_string(),
                from.to_string(),
                to.to_string(),
                outcome.to_string(),
            ))
            .or_default() += 1;
        drop(linkages);
        if let Some(after_ms) = answered_after_ms {
            let mut answers = self
                .linkage_answers
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            answers
                .entry((kind.to_string(), from.to_string(), to.to_string()))
                .or_insert_with(|| Histogram::new(ANSWER_BUCKETS))
                .observe_ms(after_ms);
        }
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
        let routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        let columns: [(&str, String, Column); 4] = [
            (
                "hotline_route_calls_offered_total",
                "calls of the route (the [[route]] number the dialled number matched) offered to a desk".into(),
                |r| r.offered,
            ),
            (
                "hotline_route_calls_answered_total",
                "calls of the route a desk answered".into(),
                |r| r.answered,
            ),
            (
                "hotline_route_calls_answered_within_total",
                format!("calls of the route answered within {within} s of their start"),
                |r| r.answered_within,
            ),
            (
                "hotline_route_calls_abandoned_total",
                "calls of the route whose caller hung up before any desk answered".into(),
                |r| r.abandoned,
            ),
        ];
        for (name, help, value) in columns {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (route, row) in routes.iter() {
                let _ = writeln!(
                    out,
                    "{name}{{route=\"{}\"}} {}",
                    label_value(route),
                    value(row)
                );
            }
        }
        drop(routes);
        let times = self.times.lock().unwrap_or_else(PoisonError::into_inner);
        type Pick = fn(&PlatformTimes) -> &Histogram;
        let histograms: [(&str, &str, Pick); 3] = [
            (
                "hotline_desk_answer_seconds",
                "answered calls' time from their start to the desk's answer, by platform",
                |t| &t.answer,
            ),
            (
                "hotline_desk_ring_seconds",
                "answered calls' time from the desk's first ringing to its answer, by platform",
                |t| &t.ring,
            ),
            (
                "hotline_desk_abandon_seconds",
                "abandoned calls' time from their start to the caller's hanging up, by platform",
                |t| &t.abandon,
            ),
        ];
        for (name, help, pick) in histograms {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            for (platform, times) in times.iter() {
                let histogram = pick(times);
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
        drop(linkages);
        let answers = self
            .linkage_answers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let name = "hotline_linkage_answer_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} connected transfers' and conference guests' time from the request to the target's answer, by kind and direction\n# TYPE {name} histogram"
        );
        for ((kind, from, to), histogram) in answers.iter() {
            let labels = format!(
                "kind=\"{}\",from=\"{}\",to=\"{}\"",
                label_value(kind),
                label_value(from),
                label_value(to)
            );
            histogram.render_series(name, &labels, out);
        }
    }
}
