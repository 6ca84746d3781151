//! What the command line prints: pure presentation of what the store reads (the `calls`
//! table). The store returns records; how an operator sees them is decided here.

use crate::store::{format_time, CallRecord};

/// A fixed-width table, one line per call, times in UTC; with a `node` column when the calls
/// come from a cluster's shared store.
pub fn format_calls_table(records: &[CallRecord]) -> String {
    let table = calls_table(records);
    if records.iter().all(|r| r.node.is_empty()) {
        return table;
    }
    let width = records
        .iter()
        .map(|r| r.node.chars().count())
        .max()
        .unwrap_or(0)
        .max(4);
    let nodes = std::iter::once("node").chain(records.iter().map(|r| r.node.as_str()));
    table
        .lines()
        .zip(nodes)
        .map(|(line, node)| format!("{node:<width$} {line}\n"))
        .collect()
}

fn calls_table(records: &[CallRecord]) -> String {
    let mut out = format!(
        "{:<23} {:<14} {:<8} {:<9} {:<9} {:>6} {:>7} {:<8} {:<18} {:>8} {:>8}\n",
        "started (UTC)",
        "caller",
        "called",
        "from",
        "to",
        "status",
        "secs",
        "ended_by",
        "reason",
        "rtp a>b",
        "rtp b>a"
    );
    for r in records {
        let seconds = match (r.answered_at, r.ended_at) {
            (Some(a), Some(e)) => format!("{:.1}", (e - a) as f64 / 1000.0),
            _ => "-".into(),
        };
        out.push_str(&format!(
            "{:<23} {:<14} {:<8} {:<9} {:<9} {:>6} {:>7} {:<8} {:<18} {:>8} {:>8}\n",
            format_time(r.started_at),
            r.caller,
            r.called,
            r.a_peer,
            r.b_peer.as_deref().unwrap_or("-"),
            r.final_status.map_or("-".to_string(), |s| s.to_string()),
            seconds,
            r.ended_by.as_deref().unwrap_or("(active)"),
            r.end_reason.as_deref().unwrap_or("-"),
            r.rtp_a_to_b,
            r.rtp_b_to_a,
        ));
    }
    out
}
