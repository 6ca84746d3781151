//! Prometheus counters and gauges, lock-free (relaxed atomics), rendered as text exposition
//! format 0.0.4 by [`Metrics::render`] for `GET /metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

mod catalogue;
mod figures;
mod histogram;

pub use catalogue::{Counter, Gauge};
use catalogue::{COUNTERS, GAUGES};
pub use figures::DeskOutcome;

/// How a call ended, for `hotline_calls_total{result=...}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallResult {
    Answered,
    Rejected,
    Failed,
    Cancelled,
}

const RESULTS: [(CallResult, &str); 4] = [
    (CallResult::Answered, "answered"),
    (CallResult::Rejected, "rejected"),
    (CallResult::Failed, "failed"),
    (CallResult::Cancelled, "cancelled"),
];

/// Every metric of the gateway. One instance, shared by `Arc`.
#[derive(Debug)]
pub struct Metrics {
    counters: [AtomicU64; COUNTERS.len()],
    gauges: [AtomicI64; GAUGES.len()],
    calls: [AtomicU64; RESULTS.len()],
    /// `hotline_peer_up{peer}`: each probed peer, in the order first set. Written at each
    /// change of a peer's state, read per scrape: a lock is cheap here (no call path takes it).
    peers_up: Mutex<Vec<(String, bool)>>,
    /// `hotline_peer_registered{peer}` and `hotline_peer_registrations_total{peer,result}`:
    /// each registering peer, in the order first set (written per REGISTER answer).
    registrations: Mutex<Vec<PeerRegistration>>,
    /// `hotline_interface_*{interface}`: each interface's media figures, in the order
    /// registered (at start, by the port pools that update them).
    interfaces: Mutex<Vec<(String, Arc<InterfaceMetrics>)>>,
    /// `hotline_queue_wait_seconds`: each queued call's wait, at its end.
    queue_wait: histogram::Histogram,
    /// `hotline_conference_seconds`: each conference's length, at its end.
    conference_length: histogram::Histogram,
    /// `hotline_desk_calls_*{peer,platform}` and `hotline_linkages_total{...}`.
    figures: figures::Figures,
}

/// The buckets of `hotline_queue_wait_seconds`: the service-level marks centres use (within
/// 10, 15, 20, 30 s) up to the longest `queue_secs`.
const QUEUE_WAIT_BUCKETS: &[u32] = &[
    1, 2, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1800, 3600,
];

/// The buckets of `hotline_conference_seconds`: a consultation of seconds to a long
/// three-way call.
const CONFERENCE_BUCKETS: &[u32] = &[5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200];

/// One network interface's media figures, updated by its port pool without a lock.
#[derive(Debug, Default)]
pub struct InterfaceMetrics {
    /// RTP and RTCP ports bound now.
    pub ports_in_use: AtomicI64,
    /// Legs given a port pair there (callers, desks, transfer targets, conference guests).
    pub legs: AtomicU64,
}

/// One registering peer's rows.
#[derive(Debug)]
struct PeerRegistration {
    peer: String,
    registered: bool,
    ok: u64,
    failed: u64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            counters: std::array::from_fn(|_| AtomicU64::new(0)),
            gauges: std::array::from_fn(|_| AtomicI64::new(0)),
            calls: std::array::from_fn(|_| AtomicU64::new(0)),
            peers_up: Mutex::new(Vec::new()),
            registrations: Mutex::new(Vec::new()),
            interfaces: Mutex::new(Vec::new()),
            queue_wait: histogram::Histogram::new(QUEUE_WAIT_BUCKETS),
            conference_length: histogram::Histogram::new(CONFERENCE_BUCKETS),
            figures: figures::Figures::default(),
        }
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::default()
    }

    pub fn increment(&self, counter: Counter) {
        self.add(counter, 1);
    }

    pub fn add(&self, counter: Counter, value: u64) {
        if value > 0 {
            self.counters[counter_index(counter)].fetch_add(value, Ordering::Relaxed);
        }
    }

    pub fn add_gauge(&self, gauge: Gauge, delta: i64) {
        self.gauges[gauge_index(gauge)].fetch_add(delta, Ordering::Relaxed);
    }

    pub fn set_gauge(&self, gauge: Gauge, value: i64) {
        self.gauges[gauge_index(gauge)].store(value, Ordering::Relaxed);
    }

    /// The service level `hotline_desk_calls_answered_within_total` counts against.
    pub fn set_service_level_secs(&self, secs: u64) {
        self.figures.set_service_level_secs(secs);
    }

    /// A call offered to `desk` (of `platform`, or `-`) ended so.
    pub fn count_desk_call(
        &self,
        (desk, platform, route): (&str, &str, &str),
        outcome: DeskOutcome,
    ) {
        self.figures
            .count_desk_call((desk, platform, route), outcome);
    }

    /// A linkage of `kind` from platform `from` to `to` (a platform, or a desk) settled with
    /// `outcome` (`answered`, `failed`).
    /// A linkage settled with `outcome`; a connected one `answered_after_ms` after its request.
    pub fn count_linkage(
        &self,
        (kind, from, to): (&str, &str, &str),
        outcome: &str,
        answered_after_ms: Option<u64>,
    ) {
        self.figures
            .count_linkage((kind, from, to), outcome, answered_after_ms);
    }

    /// A queued call's wait ended (answered, overflowed, abandoned or given up).
    pub fn observe_queue_wait(&self, waited_ms: u64) {
        self.queue_wait.observe_ms(waited_ms);
    }

    /// A conference ended after `length_ms`.
    pub fn observe_conference(&self, length_ms: u64) {
        self.conference_length.observe_ms(length_ms);
    }

    pub fn count_call(&self, result: CallResult) {
        self.calls[RESULTS.iter().position(|(r, _)| *r == result).unwrap_or(0)]
            .fetch_add(1, Ordering::Relaxed);
    }

    /// The figures of interface `name` (registered on first ask), for its port pool.
    pub fn interface(&self, name: &str) -> Arc<InterfaceMetrics> {
        let mut interfaces = self
            .interfaces
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((_, figures)) = interfaces.iter().find(|(n, _)| n == name) {
            return Arc::clone(figures);
        }
        let figures = Arc::new(InterfaceMetrics::default());
        interfaces.push((name.to_string(), Arc::clone(&figures)));
        figures
    }

    /// Sets `hotline_peer_up{peer="name"}` (a probed peer: 1 up, 0 down).
    pub fn set_peer_up(&self, peer: &str, up: bool) {
        let mut peers = self.peers_up.lock().unwrap_or_else(PoisonError::into_inner);
        match peers.iter_mut().find(|(name, _)| name == peer) {
            Some(entry) => entry.1 = up,
            None => peers.push((peer.to_string(), up)),
        }
    }

    /// Sets `hotline_peer_registered{peer="name"}` (a registering peer: 1 bound, 0 not) and
    /// counts the REGISTER answer that set it, if any (`Some(true)` a success, `Some(false)` a
    /// failure).
    pub fn set_peer_registered(&self, peer: &str, registered: bool, answer: Option<bool>) {
        let mut peers = self
            .registrations
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let index = match peers.iter().position(|p| p.peer == peer) {
            Some(index) => index,
            None => {
                peers.push(PeerRegistration {
                    peer: peer.to_string(),
                    registered,
                    ok: 0,
                    failed: 0,
                });
                peers.len() - 1
            }
        };
        let entry = &mut peers[index];
        entry.registered = registered;
        match answer {
            Some(true) => entry.ok += 1,
            Some(false) => entry.failed += 1,
            None => {}
        }
    }

    /// Whether the gateway's registration at `peer` holds (None: it does not register there).
    pub fn peer_registered(&self, peer: &str) -> Option<bool> {
        let peers = self
            .registrations
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        peers.iter().find(|p| p.peer == peer).map(|p| p.registered)
    }

    pub fn counter(&self, counter: Counter) -> u64 {
        self.counters[counter_index(counter)].load(Ordering::Relaxed)
    }

    pub fn gauge(&self, gauge: Gauge) -> i64 {
        self.gauges[gauge_index(gauge)].load(Ordering::Relaxed)
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let _ = writeln!(out, "# HELP hotline_calls_total calls ended, by result");
        let _ = writeln!(out, "# TYPE hotline_calls_total counter");
        for (index, (_, label)) in RESULTS.iter().enumerate() {
            let value = self.calls[index].load(Ordering::Relaxed);
            let _ = writeln!(out, "hotline_calls_total{{result=\"{label}\"}} {value}");
        }
        for (index, (_, name, help)) in GAUGES.iter().enumerate() {
            let value = self.gauges[index].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        self.render_peers_up(&mut out);
        self.render_registrations(&mut out);
        self.render_interfaces(&mut out);
        self.figures.render(&mut out);
        self.queue_wait.render(
            "hotline_queue_wait_seconds",
            "the waits of queued calls, observed as each ended (answered, overflowed, abandoned, given up)",
            &mut out,
        );
        self.conference_length.render(
            "hotline_conference_seconds",
            "the lengths of conferences, observed as each ended (from the first party joining to the mix's end)",
            &mut out,
        );
        for (index, (_, name, help)) in COUNTERS.iter().enumerate() {
            let value = self.counters[index].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        }
        out
    }
}

impl Metrics {
    /// `hotline_peer_up{peer}`, when some peer is probed.
    fn render_peers_up(&self, out: &mut String) {
        let peers = self.peers_up.lock().unwrap_or_else(PoisonError::into_inner);
        if peers.is_empty() {
            return;
        }
        let _ = writeln!(
            out,
            "# HELP hotline_peer_up whether a probed peer answers its OPTIONS probes (1) or is down (0)\n# TYPE hotline_peer_up gauge"
        );
        for (peer, up) in peers.iter() {
            let _ = writeln!(
                out,
                "hotline_peer_up{{peer=\"{}\"}} {}",
                label_value(peer),
                u8::from(*up)
            );
        }
    }
}

impl Metrics {
    /// Each interface's media figures.
    fn render_interfaces(&self, out: &mut String) {
        let interfaces = self
            .interfaces
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if interfaces.is_empty() {
            return;
        }
        let _ = writeln!(
            out,
            "# HELP hotline_interface_media_ports_in_use RTP and RTCP ports bound on the interface\n# TYPE hotline_interface_media_ports_in_use gauge"
        );
        for (name, figures) in interfaces.iter() {
            let _ = writeln!(
                out,
                "hotline_interface_media_ports_in_use{{interface=\"{}\"}} {}",
                label_value(name),
                figures.ports_in_use.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP hotline_interface_legs_total call legs given media on the interface (callers, desks, transfer targets, conference guests)\n# TYPE hotline_interface_legs_total counter"
        );
        for (name, figures) in interfaces.iter() {
            let _ = writeln!(
                out,
                "hotline_interface_legs_total{{interface=\"{}\"}} {}",
                label_value(name),
                figures.legs.load(Ordering::Relaxed)
            );
        }
    }

    /// The registering peers' rows, when some peer registers.
    fn render_registrations(&self, out: &mut String) {
        let peers = self
            .registrations
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if peers.is_empty() {
            return;
        }
        let _ = writeln!(
            out,
            "# HELP hotline_peer_registered whether the gateway's registration at the peer holds (1) or not (0)\n# TYPE hotline_peer_registered gauge"
        );
        for entry in peers.iter() {
            let _ = writeln!(
                out,
                "hotline_peer_registered{{peer=\"{}\"}} {}",
                label_value(&entry.peer),
                u8::from(entry.registered)
            );
        }
        let _ = writeln!(
            out,
            "# HELP hotline_peer_registrations_total REGISTER attempts at a peer, by result (ok: bound or refreshed; failed: refused, wrong credentials or unanswered)\n# TYPE hotline_peer_registrations_total counter"
        );
        for entry in peers.iter() {
            let peer = label_value(&entry.peer);
            for (result, value) in [("ok", entry.ok), ("failed", entry.failed)] {
                let _ = writeln!(
                    out,
                    "hotline_peer_registrations_total{{peer=\"{peer}\",result=\"{result}\"}} {value}"
                );
            }
        }
    }
}

/// A label value escaped as the exposition format wants (backslash, quote, newline).
fn label_value(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn counter_index(counter: Counter) -> usize {
    COUNTERS
        .iter()
        .position(|(c, _, _)| *c == counter)
        .unwrap_or(0)
}

fn gauge_index(gauge: Gauge) -> usize {
    GAUGES.iter().position(|(g, _, _)| *g == gauge).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_shows_values_in_exposition_format() {
        let metrics = Metrics::new();
        metrics.increment(Counter::SipParseErrors);
        metrics.add(Counter::RtpPacketsRelayed, 500);
        metrics.add_gauge(Gauge::CallsActive, 3);
        metrics.add_gauge(Gauge::CallsActive, -1);
        metrics.count_call(CallResult::Answered);
        metrics.count_call(CallResult::Cancelled);
        let text = metrics.render();
        assert!(text.contains("hotline_sip_parse_errors_total 1\n"));
        assert!(text.contains("hotline_rtp_packets_relayed_total 500\n"));
        assert!(text.contains("hotline_calls_active 2\n"));
        assert!(text.contains("hotline_calls_total{result=\"answered\"} 1\n"));
        assert!(text.contains("hotline_calls_total{result=\"rejected\"} 0\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').unwrap_or_default();
            assert!(
                !name.is_empty() && value.parse::<f64>().is_ok(),
                "bad line {line:?}"
            );
        }
        // Each enum variant has its own row.
        let names: std::collections::HashSet<&str> = COUNTERS.iter().map(|(_, n, _)| *n).collect();
        assert_eq!(names.len(), COUNTERS.len());
        assert_eq!(metrics.counter(Counter::RtpPacketsRelayed), 500);
        assert!(!text.contains("hotline_peer_up"), "no probed peer: no rows");
    }

    #[test]
    fn registering_peers_have_a_gauge_and_counters_each() {
        let metrics = Metrics::new();
        assert!(!metrics.render().contains("hotline_peer_registered"));
        metrics.set_peer_registered("carrier", false, None);
        metrics.set_peer_registered("carrier", false, Some(false));
        metrics.set_peer_registered("carrier", true, Some(true));
        metrics.set_peer_registered("ims", false, Some(false));
        let text = metrics.render();
        for row in [
            "# TYPE hotline_peer_registered gauge\n",
            "hotline_peer_registered{peer=\"carrier\"} 1\n",
            "hotline_peer_registered{peer=\"ims\"} 0\n",
            "# TYPE hotline_peer_registrations_total counter\n",
            "hotline_peer_registrations_total{peer=\"carrier\",result=\"ok\"} 1\n",
            "hotline_peer_registrations_total{peer=\"carrier\",result=\"failed\"} 1\n",
            "hotline_peer_registrations_total{peer=\"ims\",result=\"ok\"} 0\n",
        ] {
            assert!(text.contains(row), "{row} not in {text}");
        }
    }

    #[test]
    fn probed_peers_have_a_labelled_row_each() {
        let metrics = Metrics::new();
        metrics.set_peer_up("police-a", true);
        metrics.set_peer_up("police-b", true);
        metrics.set_peer_up("police-a", false);
        metrics.set_peer_up("odd\"name", true);
        let text = metrics.render();
        assert!(text.contains("# TYPE hotline_peer_up gauge\n"), "{text}");
        assert!(
            text.contains("hotline_peer_up{peer=\"police-a\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("hotline_peer_up{peer=\"police-b\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("hotline_peer_up{peer=\"odd\\\"name\"} 1\n"),
            "{text}"
        );
    }
}
