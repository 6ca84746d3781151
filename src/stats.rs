//! The figures the centres are assessed by, computed from the records the gateway writes (no
//! second source): per platform, per desk (the peer a call was offered to; for a
//! transferred call, the desk its first linkage left from) and per route, calls offered,
//! answered, abandoned (the caller hung up first) and answered within the service level's
//! seconds, with the answer rate and the median time to answer; per linkage kind and
//! direction (12345→110, 110→12345, to 119 ...), requested, connected and failed by status,
//! with the median time from the request to the target's answer; the conferences held and
//! their length. Pure: records in, figures
//! out; `hotline-gateway stats` prints them.

use std::collections::BTreeMap;

use crate::store::CallDetail;

/// One row of calls: those offered to a platform, or to a desk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallFigures {
    pub offered: u64,
    pub answered: u64,
    /// The caller hung up before any desk answered.
    pub abandoned: u64,
    /// Answered within the service level's seconds of the call's start.
    pub answered_within: u64,
    /// Milliseconds from the call's start to its answer, of each answered call.
    answer_ms: Vec<i64>,
    /// Milliseconds from the call's start to the caller's hanging up, of each abandoned call.
    abandon_ms: Vec<i64>,
}

impl CallFigures {
    /// Answered of offered (人工接通率), in percent; None with nothing offered.
    pub fn answer_rate(&self) -> Option<f64> {
        (self.offered > 0).then(|| self.answered as f64 * 100.0 / self.offered as f64)
    }

    /// Answered within the service level of offered, in percent.
    pub fn service_level(&self) -> Option<f64> {
        (self.offered > 0).then(|| self.answered_within as f64 * 100.0 / self.offered as f64)
    }

    /// The median time from the call's start to its answer.
    pub fn median_answer_ms(&self) -> Option<i64> {
        median(&self.answer_ms)
    }

    /// The median wait of the callers who gave up before an answer.
    pub fn median_abandon_ms(&self) -> Option<i64> {
        median(&self.abandon_ms)
    }
}

/// One row of linkages: a kind in one direction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkageFigures {
    pub requested: u64,
    pub connected: u64,
    /// Failed, by the SIP status they failed with (0: none known).
    pub failed: BTreeMap<u16, u64>,
    /// Milliseconds from the request to the target's answer, of each connected linkage.
    answer_ms: Vec<i64>,
}

impl LinkageFigures {
    pub fn failed_total(&self) -> u64 {
        self.failed.values().sum()
    }

    /// The median time from the request to the target's answer.
    pub fn median_answer_ms(&self) -> Option<i64> {
        median(&self.answer_ms)
    }
}

/// A linkage's row: its kind (`transfer`, `conference`) and direction.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct LinkageKey {
    pub kind: String,
    /// The platform it left from (the agent's), or `-`.
    pub from: String,
    /// The platform it went to, or the number when it has none (119, 120 ...).
    pub to: String,
}

/// The conferences the gateway mixed: one per stretch of a call's conference parties being in
/// (from the first joining to the last leaving; one still under way is held, its length not
/// yet known).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConferenceFigures {
    pub held: u64,
    /// Milliseconds each ended conference lasted.
    length_ms: Vec<i64>,
}

impl ConferenceFigures {
    pub fn median_length_ms(&self) -> Option<i64> {
        median(&self.length_ms)
    }

    pub fn total_length_ms(&self) -> i64 {
        self.length_ms.iter().sum()
    }

    /// The conferences of one call's parties (its own, in any order).
    fn count(&mut self, parties: &[crate::store::ConferencePartyRecord]) {
        let mut spans: Vec<(i64, Option<i64>)> =
            parties.iter().map(|p| (p.joined_at, p.left_at)).collect();
        spans.sort_unstable();
        let mut current: Option<(i64, Option<i64>)> = None;
        for (joined, left) in spans {
            current = match current {
                // Overlapping (or one still in): the same conference.
                Some((start, end)) if end.is_none_or(|end| joined <= end) => {
                    Some((start, end.zip(left).map(|(a, b)| a.max(b))))
                }
                Some(done) => {
                    self.close(done);
                    Some((joined, left))
                }
                None => Some((joined, left)),
            };
        }
        if let Some(done) = current {
            self.close(done);
        }
    }

    fn close(&mut self, (start, end): (i64, Option<i64>)) {
        self.held += 1;
        if let Some(end) = end {
            self.length_ms.push((end - start).max(0));
        }
    }
}

/// The figures of a span of calls.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Figures {
    /// By the platform of the desk the call was offered to (`-`: none, or no desk tried).
    pub platforms: BTreeMap<String, CallFigures>,
    /// By that desk (the peer).
    pub desks: BTreeMap<String, CallFigures>,
    /// By the route the number dialled is a call of, as configured (`12345`, `_1[12]X`; `-`:
    /// none).
    pub routes: BTreeMap<String, CallFigures>,
    pub linkages: BTreeMap<LinkageKey, LinkageFigures>,
    /// By the platform of the desk the call was offered to, as `platforms`.
    pub conferences: BTreeMap<String, ConferenceFigures>,
    /// The service level's seconds.
    pub within_secs: u64,
}

/// The figures of `details`; `platform_of` names a peer's platform and `route_of` the route a
/// number dialled at a moment took (from the configuration).
pub fn figures(
    details: &[CallDetail],
    platform_of: impl Fn(&str) -> Option<String>,
    route_of: impl Fn(&str, i64) -> Option<String>,
    within_secs: u64,
) -> Figures {
    let mut figures = Figures {
        within_secs,
        ..Figures::default()
    };
    for detail in details {
        let call = &detail.call;
        // The desk the call was offered to: the record of a call transferred (or whose
        // conference guest took the agent's leg over) names the newcomer; its first linkage
        // names the desk that answered first.
        let first_desk = detail
            .linkages
            .iter()
            .min_by_key(|l| l.requested_at)
            .map(|l| l.from_peer.clone())
            .or_else(|| call.b_peer.clone());
        let desk = first_desk.clone().unwrap_or_else(|| "-".into());
        let platform = first_desk
            .as_deref()
            .and_then(&platform_of)
            .unwrap_or_else(|| "-".into());
        if !detail.conference_parties.is_empty() {
            let conferences = figures.conferences.entry(platform.clone()).or_default();
            conferences.count(&detail.conference_parties);
        }
        let route = route_of(&call.called, call.started_at).unwrap_or_else(|| "-".into());
        for row in [
            figures.platforms.entry(platform).or_default(),
            figures.desks.entry(desk).or_default(),
            figures.routes.entry(route).or_default(),
        ] {
            row.offered += 1;
            match call.answered_at {
                Some(answered) => {
                    let waited = answered - call.started_at;
                    row.answered += 1;
                    row.answer_ms.push(waited);
                    if waited <= i64::try_from(within_secs.saturating_mul(1000)).unwrap_or(i64::MAX)
                    {
                        row.answered_within += 1;
                    }
                }
                None if call.ended_by.as_deref() == Some("caller") => {
                    row.abandoned += 1;
                    if let Some(ended) = call.ended_at {
                        row.abandon_ms.push(ended - call.started_at);
                    }
                }
                None => {}
            }
        }
        for linkage in &detail.linkages {
            let key = LinkageKey {
                kind: linkage.kind.clone(),
                from: linkage.from_platform.clone().unwrap_or_else(|| "-".into()),
                to: linkage
                    .to_platform
                    .clone()
                    .unwrap_or_else(|| linkage.target.clone()),
            };
            let row = figures.linkages.entry(key).or_default();
            row.requested += 1;
            match (linkage.outcome.as_deref(), linkage.answered_at) {
                (Some("answered"), Some(answered)) => {
                    row.connected += 1;
                    row.answer_ms.push(answered - linkage.requested_at);
                }
                (Some("answered"), None) => row.connected += 1,
                (Some(_), _) => {
                    *row.failed
                        .entry(linkage.sip_status.unwrap_or(0))
                        .or_default() += 1;
                }
                // Still under way.
                (None, _) => {}
            }
        }
    }
    figures
}

fn median(values: &[i64]) -> Option<i64> {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    sorted.get(sorted.len().checked_sub(1)? / 2).copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{CallRecord, LinkageRecord};

    fn call(id: &str, desk: &str, answered_after: Option<i64>, ended_by: &str) -> CallDetail {
        CallDetail {
            call: CallRecord {
                id: id.into(),
                a_call_id: format!("{id}@a"),
                b_call_id: None,
                caller: "13800138000".into(),
                called: "12345".into(),
                a_peer: "carrier".into(),
                b_peer: Some(desk.into()),
                a_interface: "default".into(),
                b_interface: None,
                started_at: 1_000_000,
                answered_at: answered_after.map(|ms| 1_000_000 + ms),
                ended_at: Some(2_000_000),
                ended_by: Some(ended_by.into()),
                end_reason: None,
                final_status: None,
                rtp_a_to_b: 0,
                rtp_b_to_a: 0,
                rtp_dropped: 0,
                node: String::new(),
                recording: None,
            },
            linkages: Vec::new(),
            conference_parties: Vec::new(),
        }
    }

    fn linkage(to: &str, outcome: &str, status: u16, answer_after: Option<i64>) -> LinkageRecord {
        LinkageRecord {
            id: "l".into(),
            call_id: "c".into(),
            from_platform: Some("12345".into()),
            from_peer: "hotline".into(),
            to_platform: (to == "110").then(|| "110".into()),
            to_peer: Some("police".into()),
            target: to.into(),
            trigger: "refer".into(),
            kind: "transfer".into(),
            requested_at: 5_000,
            ringing_at: None,
            answered_at: answer_after.map(|ms| 5_000 + ms),
            ended_at: Some(9_000),
            outcome: Some(outcome.into()),
            sip_status: Some(status),
            incident_number: None,
            disposition: None,
            replied_at: None,
        }
    }

    /// Four calls to 12345's desk (answered at 5 s, then transferred, and at 30 s, one
    /// abandoned, one failed busy) and one to 110: the answer rate, the service level at 20 s, the abandons; the
    /// linkages by direction with their failures by status and median answer time.
    #[test]
    fn the_answer_rate_service_level_and_linkage_table() {
        let platform_of = |peer: &str| match peer {
            "hotline" => Some("12345".to_string()),
            "police" => Some("110".to_string()),
            _ => None,
        };
        // Its record names 110's desk, which took leg B over; it counts at the hotline.
        let mut transferred = call("c1", "police", Some(5_000), "callee");
        transferred.linkages = vec![
            linkage("110", "answered", 200, Some(3_000)),
            linkage("110", "failed", 486, None),
            linkage("119", "failed", 408, None),
        ];
        let details = vec![
            transferred,
            call("c2", "hotline", Some(30_000), "caller"),
            call("c3", "hotline", None, "caller"),
            call("c4", "hotline", None, "callee"),
            call("c5", "police", Some(2_000), "caller"),
        ];
        let route_of = |number: &str, _| (number == "12345").then(|| number.to_string());
        let figures = figures(&details, platform_of, route_of, 20);
        let hotline = &figures.platforms["12345"];
        assert_eq!(
            (
                hotline.offered,
                hotline.answered,
                hotline.abandoned,
                hotline.answered_within
            ),
            (4, 2, 1, 1)
        );
        assert_eq!(hotline.answer_rate(), Some(50.0));
        assert_eq!(hotline.service_level(), Some(25.0));
        assert_eq!(hotline.median_answer_ms(), Some(5_000));
        // c3's caller gave up 1000 s after the start.
        assert_eq!(hotline.median_abandon_ms(), Some(1_000_000));
        assert_eq!(figures.platforms["110"].answer_rate(), Some(100.0));
        assert_eq!(
            figures.platforms["110"].offered, 1,
            "the transferred call is 12345's"
        );
        assert_eq!(figures.desks["hotline"], *hotline);
        // Every call dialled 12345: its route has them all, 12345's and 110's desks alike.
        let line = &figures.routes["12345"];
        assert_eq!((line.offered, line.answered, line.abandoned), (5, 3, 1));
        let to_110 = &figures.linkages[&LinkageKey {
            kind: "transfer".into(),
            from: "12345".into(),
            to: "110".into(),
        }];
        assert_eq!((to_110.requested, to_110.connected), (2, 1));
        assert_eq!(to_110.failed, BTreeMap::from([(486, 1)]));
        assert_eq!(to_110.median_answer_ms(), Some(3_000));
        let to_119 = &figures.linkages[&LinkageKey {
            kind: "transfer".into(),
            from: "12345".into(),
            to: "119".into(),
        }];
        assert_eq!((to_119.requested, to_119.failed_total()), (1, 1));
    }

    fn party(
        party: u8,
        joined_at: i64,
        left_at: Option<i64>,
    ) -> crate::store::ConferencePartyRecord {
        crate::store::ConferencePartyRecord {
            call_id: "c".into(),
            party,
            peer: "p".into(),
            number: String::new(),
            joined_at,
            left_at,
        }
    }

    /// One call's conference of 60 s (a guest joined and left within it), another call's two
    /// conferences of 10 s, a third's still under way: four held, median and total of the
    /// three that ended.
    #[test]
    fn conferences_held_and_their_length() {
        let mut one = call("c1", "hotline", Some(1_000), "caller");
        one.conference_parties = vec![
            party(0, 0, Some(60_000)),
            party(2, 10_000, Some(50_000)),
            party(1, 0, Some(60_000)),
        ];
        let mut two = call("c2", "hotline", Some(1_000), "caller");
        two.conference_parties = vec![
            party(0, 0, Some(10_000)),
            party(1, 0, Some(10_000)),
            party(0, 20_000, Some(30_000)),
            party(2, 20_000, Some(30_000)),
        ];
        let mut three = call("c3", "hotline", Some(1_000), "caller");
        three.conference_parties = vec![party(0, 0, Some(5_000)), party(2, 1_000, None)];
        let calls = [one, two, three, call("c4", "hotline", None, "caller")];
        let platform_of = |_: &str| Some("12345".to_string());
        let figures = figures(&calls, platform_of, |_, _| None, 20);
        let conferences = &figures.conferences["12345"];
        assert_eq!(conferences.held, 4);
        assert_eq!(conferences.median_length_ms(), Some(10_000));
        assert_eq!(conferences.total_length_ms(), 80_000);
        assert_eq!(figures.conferences.len(), 1);
    }
}
