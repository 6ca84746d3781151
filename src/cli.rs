//! What the command line prints: pure presentation of what the store reads (the `calls`
//! table, and its JSON Lines and CSV exports of the call detail records). The store returns
//! records; how an operator sees them is decided here.

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

/// `calls`: the records at `location` as `format` prints them: without `since`, the table of
/// the newest `limit` (20) calls; with it (json and csv: 24 h by default), every call started
/// since then, oldest first, at most `limit`.
///
/// # Errors
/// A `since` that is no time, or a store that cannot be read (named).
pub fn calls(
    location: &crate::store::StoreLocation,
    limit: Option<usize>,
    format: CallsFormat,
    since: Option<&str>,
    now_ms: i64,
) -> Result<String, String> {
    let since = match (since, format) {
        (Some(text), _) => Some(parse_since(text, now_ms)?),
        (None, CallsFormat::Table) => None,
        (None, _) => Some(parse_since("24h", now_ms)?),
    };
    let read = |error| format!("{location}: {error}");
    let Some(since) = since else {
        return location
            .list_calls(limit.unwrap_or(20))
            .map(|records| format_calls_table(&records))
            .map_err(read);
    };
    let details = location
        .call_details_since(since, limit.unwrap_or(usize::MAX))
        .map_err(read)?;
    Ok(match format {
        CallsFormat::Table => {
            let records: Vec<_> = details.into_iter().map(|d| d.call).collect();
            format_calls_table(&records)
        }
        CallsFormat::Json => crate::cdr::json_lines(&details),
        CallsFormat::Csv => crate::cdr::csv(&details),
    })
}

/// How `calls` prints the records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CallsFormat {
    /// The fixed-width table, for a person.
    #[default]
    Table,
    /// One JSON object per call and line (JSON Lines), with its linkages.
    Json,
    /// RFC 4180 CSV with a header line; the last column holds the linkages as a JSON array.
    Csv,
}

impl std::str::FromStr for CallsFormat {
    type Err = String;

    fn from_str(text: &str) -> Result<CallsFormat, String> {
        match text {
            "table" => Ok(CallsFormat::Table),
            "json" => Ok(CallsFormat::Json),
            "csv" => Ok(CallsFormat::Csv),
            other => Err(format!("unknown format {other:?} (table, json or csv)")),
        }
    }
}

/// `calls --since`: a span back from `now` (`90s`, `30m`, `24h`, `7d`), a UTC date
/// (`2026-12-04`), a time (`2026-12-04T08:00`, `...:30`, with `Z` or an offset such as
/// `+08:00`; none is UTC), or Unix milliseconds. The instant, in Unix ms.
///
/// # Errors
/// What in `text` is none of those.
pub fn parse_since(text: &str, now_ms: i64) -> Result<i64, String> {
    let wrong = || {
        format!("--since {text:?}: expected 24h, 30m, 90s, 7d, 2026-12-04, 2026-12-04T08:00+08:00 or Unix ms")
    };
    if let Some(unit) = text.chars().last().filter(|c| "smhd".contains(*c)) {
        let count: i64 = text[..text.len() - 1]
            .parse()
            .ok()
            .filter(|count| *count >= 0)
            .ok_or_else(wrong)?;
        let ms = match unit {
            's' => 1000,
            'm' => 60_000,
            'h' => 3_600_000,
            _ => 86_400_000,
        };
        return count
            .checked_mul(ms)
            .and_then(|back| now_ms.checked_sub(back))
            .ok_or_else(wrong);
    }
    if !text.contains('-') {
        return text.parse().map_err(|_| wrong());
    }
    let (date, time) = text.split_once('T').unwrap_or((text, ""));
    let mut parts = date.splitn(3, '-');
    let (Some(year), Some(month), Some(day)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(wrong());
    };
    let days = match (year.parse(), month.parse(), day.parse()) {
        (Ok(year), Ok(month), Ok(day)) => {
            crate::calendar::days_from_civil(year, month, day).ok_or_else(wrong)?
        }
        _ => return Err(wrong()),
    };
    let (clock, offset_ms) = match time.find(['Z', 'z', '+', '-']) {
        Some(at) => {
            let zone = &time[at..];
            let offset = match zone {
                "Z" | "z" => 0,
                _ => {
                    let sign = if zone.starts_with('-') { -1 } else { 1 };
                    let (hours, minutes) = zone[1..].split_once(':').ok_or_else(wrong)?;
                    let hours: i64 = hours
                        .parse()
                        .ok()
                        .filter(|h| (0..24).contains(h))
                        .ok_or_else(wrong)?;
                    let minutes: i64 = minutes
                        .parse()
                        .ok()
                        .filter(|m| (0..60).contains(m))
                        .ok_or_else(wrong)?;
                    sign * (hours * 3_600_000 + minutes * 60_000)
                }
            };
            (&time[..at], offset)
        }
        None => (time, 0),
    };
    if !time.is_empty() && clock.split(':').count() < 2 {
        // A time is hours and minutes at least.
        return Err(wrong());
    }
    let mut fields = clock.split(':').filter(|f| !f.is_empty());
    let mut next = |limit: i64| -> Result<i64, String> {
        match fields.next() {
            None => Ok(0),
            Some(field) => field
                .parse::<i64>()
                .ok()
                .filter(|v| (0..limit).contains(v))
                .ok_or_else(wrong),
        }
    };
    let (hours, minutes, seconds) = (next(24)?, next(60)?, next(60)?);
    if fields.next().is_some() {
        return Err(wrong());
    }
    days.checked_mul(86_400_000)
        .map(|ms| ms + hours * 3_600_000 + minutes * 60_000 + seconds * 1000 - offset_ms)
        .ok_or_else(wrong)
}

/// `stats`: the figures of the calls started since `since` (default 24 h) at `location`;
/// `platform_of` names a peer's platform, `within_secs` is the service level.
///
/// # Errors
/// A `since` that is no time, or a store that cannot be read (named).
pub fn stats(
    location: &crate::store::StoreLocation,
    (platform_of, route_of): (
        impl Fn(&str) -> Option<String>,
        impl Fn(&str, i64) -> Option<String>,
    ),
    since: Option<&str>,
    within_secs: u64,
    now_ms: i64,
) -> Result<String, String> {
    if !(1..=3600).contains(&within_secs) {
        return Err(format!("--within {within_secs}: 1 to 3600 seconds"));
    }
    let since = parse_since(since.unwrap_or("24h"), now_ms)?;
    let details = location
        .call_details_since(since, usize::MAX)
        .map_err(|error| format!("{location}: {error}"))?;
    let figures = crate::stats::figures(&details, platform_of, route_of, within_secs);
    Ok(format_stats(&figures, since))
}

/// The figures as three tables: by platform, by desk, and the linkages.
pub fn format_stats(figures: &crate::stats::Figures, since: i64) -> String {
    let percent = |value: Option<f64>| value.map_or("-".to_string(), |v| format!("{v:.1}%"));
    let seconds =
        |ms: Option<i64>| ms.map_or("-".to_string(), |ms| format!("{:.1}", ms as f64 / 1000.0));
    let within = figures.within_secs;
    let mut out = format!("calls since {} (UTC)\n\n", format_time(since));
    let tables = [
        ("platform", &figures.platforms),
        ("desk", &figures.desks),
        ("route", &figures.routes),
    ];
    for (title, rows) in tables {
        out.push_str(&format!(
            "{title:<12} {:>8} {:>8} {:>9} {:>11} {:>10} {:>12} {:>13}\n",
            "offered",
            "answered",
            "abandoned",
            "answer rate",
            format!("<= {within} s"),
            "answer p50 s",
            "abandon p50 s"
        ));
        for (name, row) in rows {
            out.push_str(&format!(
                "{name:<12} {:>8} {:>8} {:>9} {:>11} {:>10} {:>12} {:>13}\n",
                row.offered,
                row.answered,
                row.abandoned,
                percent(row.answer_rate()),
                percent(row.service_level()),
                seconds(row.median_answer_ms()),
                seconds(row.median_abandon_ms()),
            ));
        }
        out.push('\n');
    }
    out.push_str(&format!(
        "{:<11} {:<8} {:<8} {:>9} {:>9} {:>6} {:>12}  failed by status\n",
        "linkage", "from", "to", "requested", "connected", "failed", "answer p50 s"
    ));
    for (key, row) in &figures.linkages {
        let causes: Vec<String> = row
            .failed
            .iter()
            .map(|(status, count)| format!("{status}: {count}"))
            .collect();
        out.push_str(&format!(
            "{:<11} {:<8} {:<8} {:>9} {:>9} {:>6} {:>12}  {}\n",
            key.kind,
            key.from,
            key.to,
            row.requested,
            row.connected,
            row.failed_total(),
            seconds(row.median_answer_ms()),
            causes.join(", ")
        ));
    }
    if !figures.conferences.is_empty() {
        out.push_str(&format!(
            "\n{:<12} {:>8} {:>12} {:>14}\n",
            "conferences", "held", "length p50 s", "length total s"
        ));
        for (platform, row) in &figures.conferences {
            out.push_str(&format!(
                "{platform:<12} {:>8} {:>12} {:>14}\n",
                row.held,
                seconds(row.median_length_ms()),
                seconds(Some(row.total_length_ms())),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_795_305_600_000; // 2026-11-22T00:00:00Z

    #[test]
    fn since_takes_spans_dates_times_with_offsets_and_unix_ms() {
        assert_eq!(parse_since("24h", NOW), Ok(NOW - 86_400_000));
        assert_eq!(parse_since("30m", NOW), Ok(NOW - 1_800_000));
        assert_eq!(parse_since("90s", NOW), Ok(NOW - 90_000));
        assert_eq!(parse_since("7d", NOW), Ok(NOW - 7 * 86_400_000));
        assert_eq!(parse_since("2026-11-22", NOW), Ok(NOW));
        assert_eq!(
            parse_since("2026-11-22T08:00", NOW),
            Ok(NOW + 8 * 3_600_000)
        );
        assert_eq!(parse_since("2026-11-22T08:00+08:00", NOW), Ok(NOW));
        assert_eq!(
            parse_since("2026-11-22T08:00:30Z", NOW),
            Ok(NOW + 8 * 3_600_000 + 30_000)
        );
        assert_eq!(parse_since("2026-11-21T19:00-05:00", NOW), Ok(NOW));
        assert_eq!(parse_since("2026-11-22T00:00z", NOW), Ok(NOW));
        assert_eq!(parse_since("1795305600000", NOW), Ok(NOW));
        for bad in [
            "",
            "yesterday",
            "24x",
            "h",
            "2026-13-01",
            "2026-11-22T25:00",
            "2026-11-22T08:00:00:00",
            "99999999999999999999d",
            "-5h",
            "2026-11-22T08",
            "2026-11-22T08:00+99:99",
            "300000000-01-01",
        ] {
            assert!(parse_since(bad, NOW).is_err(), "{bad:?} accepted");
        }
    }
}
