//! The call detail record (CDR) as the gateway exports it: a call's record with its linkages
//! (transfers, conference guests), as one JSON object (JSON Lines: `calls --format json`,
//! `[cdr]`'s daily files) or one RFC 4180 CSV line (`calls --format csv`). One format for
//! both, field by field in the README.

use crate::store::{CallDetail, CallRecord, LinkageRecord};

/// The columns of a call, in the CSV's order and under the JSON's names.
pub const CALL_FIELDS: [&str; 21] = [
    "id",
    "started",
    "started_at",
    "answered_at",
    "ended_at",
    "caller",
    "called",
    "a_peer",
    "b_peer",
    "a_interface",
    "b_interface",
    "a_call_id",
    "b_call_id",
    "ended_by",
    "end_reason",
    "final_status",
    "rtp_a_to_b",
    "rtp_b_to_a",
    "rtp_dropped",
    "node",
    "recording",
];

/// A call's fields as JSON values, in [`CALL_FIELDS`] order.
fn call_values(call: &CallRecord) -> [serde_json::Value; 21] {
    use serde_json::Value;
    let text = |s: &str| Value::from(s);
    let opt_text = |s: &Option<String>| s.as_deref().map_or(Value::Null, Value::from);
    let opt_ms = |ms: Option<i64>| ms.map_or(Value::Null, Value::from);
    [
        text(&call.id),
        Value::from(crate::calendar::rfc3339(call.started_at)),
        Value::from(call.started_at),
        opt_ms(call.answered_at),
        opt_ms(call.ended_at),
        text(&call.caller),
        text(&call.called),
        text(&call.a_peer),
        opt_text(&call.b_peer),
        text(&call.a_interface),
        opt_text(&call.b_interface),
        text(&call.a_call_id),
        opt_text(&call.b_call_id),
        opt_text(&call.ended_by),
        opt_text(&call.end_reason),
        call.final_status.map_or(Value::Null, Value::from),
        Value::from(call.rtp_a_to_b),
        Value::from(call.rtp_b_to_a),
        Value::from(call.rtp_dropped),
        text(&call.node),
        opt_text(&call.recording),
    ]
}

/// A call's linkages (transfers, conference guests) as a JSON array.
fn linkages_value(linkages: &[LinkageRecord]) -> serde_json::Value {
    linkages
        .iter()
        .map(|l| {
            serde_json::json!({
                "id": l.id,
                "kind": l.kind,
                "trigger": l.trigger,
                "from_platform": l.from_platform,
                "from_peer": l.from_peer,
                "to_platform": l.to_platform,
                "to_peer": l.to_peer,
                "target": l.target,
                "requested_at": l.requested_at,
                "ringing_at": l.ringing_at,
                "answered_at": l.answered_at,
                "ended_at": l.ended_at,
                "outcome": l.outcome,
                "sip_status": l.sip_status,
                "incident_number": l.incident_number,
                "disposition": l.disposition,
                "replied_at": l.replied_at,
            })
        })
        .collect()
}

/// One JSON object per line: the call's fields ([`CALL_FIELDS`]) and `linkages`.
pub fn json_lines(details: &[CallDetail]) -> String {
    let mut out = String::new();
    for detail in details {
        let mut object: serde_json::Map<String, serde_json::Value> = CALL_FIELDS
            .iter()
            .map(|name| name.to_string())
            .zip(call_values(&detail.call))
            .collect();
        object.insert("linkages".into(), linkages_value(&detail.linkages));
        out.push_str(&serde_json::Value::Object(object).to_string());
        out.push('\n');
    }
    out
}

/// CSV (RFC 4180): a header line of [`CALL_FIELDS`] and `linkages`, then a line per call; an
/// empty cell is a field with no value, `linkages` a JSON array.
pub fn csv(details: &[CallDetail]) -> String {
    let mut out = CALL_FIELDS.join(",");
    out.push_str(",linkages\r\n");
    for detail in details {
        let cells: Vec<String> = call_values(&detail.call)
            .iter()
            .map(|value| match value {
                serde_json::Value::Null => String::new(),
                serde_json::Value::String(text) => csv_cell(&defused(text)),
                other => other.to_string(),
            })
            .chain(std::iter::once(csv_cell(
                &linkages_value(&detail.linkages).to_string(),
            )))
            .collect();
        out.push_str(&cells.join(","));
        out.push_str("\r\n");
    }
    out
}

/// A text a spreadsheet would run as a formula (`=`, `+`, `-`, `@` first: a caller's name or
/// number comes from the network) starts with a `'` instead.
fn defused(text: &str) -> std::borrow::Cow<'_, str> {
    if text.starts_with(['=', '+', '-', '@']) {
        std::borrow::Cow::Owned(format!("'{text}"))
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

/// A CSV cell: quoted (with quotes doubled) when it holds a comma, a quote or a line break.
pub(crate) fn csv_cell(text: &str) -> String {
    if text.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_cells_with_commas_quotes_or_line_breaks_are_quoted() {
        assert_eq!(csv_cell("plain"), "plain");
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
        assert_eq!(csv_cell("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_cell("two\nlines"), "\"two\nlines\"");
        assert_eq!(defused("=HYPERLINK(\"x\")"), "'=HYPERLINK(\"x\")");
        assert_eq!(defused("13800138000"), "13800138000");
    }
}
