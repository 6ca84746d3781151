//! `GetStats`: a platform's figures ([`crate::stats`]) as the API gives them, computed from
//! the store's records and cut to what the platform may see: its own desks, and the
//! linkages it sent or received.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use tonic::Status;

use super::convert;
use super::pb;
use crate::stats::{CallFigures, Figures, LinkageFigures};
use crate::store::StoreLocation;

/// A day back, when the request names no `since`.
const DEFAULT_SPAN_MS: i64 = 86_400_000;
/// The longest span one request reads (every call of it is read from the store).
const MAX_SPAN_MS: i64 = 31 * 86_400_000;

/// The figures of `platform` for `request`, read from `location`; `peer_platforms` names each
/// peer's platform.
///
/// # Errors
/// INVALID_ARGUMENT for a service level over an hour or a span over 31 days; INTERNAL if the
/// store cannot be read.
pub(super) async fn figures_of(
    platform: &str,
    request: &pb::GetStatsRequest,
    location: &StoreLocation,
    peer_platforms: &Arc<HashMap<String, String>>,
) -> Result<pb::GetStatsResponse, Status> {
    let within = match request.service_level_secs {
        0 => 20,
        secs @ 1..=3600 => u64::from(secs),
        secs => {
            return Err(Status::invalid_argument(format!(
                "service_level_secs {secs}: at most 3600"
            )))
        }
    };
    let now = crate::store::unix_millis(SystemTime::now());
    let since = match &request.since {
        Some(since) => convert::unix_ms(Some(since)),
        None => now - DEFAULT_SPAN_MS,
    };
    if since < now - MAX_SPAN_MS {
        return Err(Status::invalid_argument(
            "since: at most 31 days back (hotline-gateway stats reads any span)",
        ));
    }
    let location = location.clone();
    let details =
        tokio::task::spawn_blocking(move || location.call_details_since(since, usize::MAX))
            .await
            .map_err(|_| Status::internal("store reader"))?
            .map_err(|error| Status::internal(error.to_string()))?;
    let platforms = Arc::clone(peer_platforms);
    // Its routes are not in the answer (its desks are): no route named.
    let platform_of = |peer: &str| platforms.get(peer).cloned();
    let figures = crate::stats::figures(&details, platform_of, |_, _| None, within);
    Ok(response(platform, &figures, since, peer_platforms))
}

fn response(
    platform: &str,
    figures: &Figures,
    since: i64,
    peer_platforms: &HashMap<String, String>,
) -> pb::GetStatsResponse {
    let desks = figures
        .desks
        .iter()
        .filter(|(desk, _)| peer_platforms.get(*desk).map(String::as_str) == Some(platform))
        .map(|(desk, calls)| pb::DeskFigures {
            desk: desk.clone(),
            calls: Some(call_figures(calls)),
        })
        .collect();
    let linkages = figures
        .linkages
        .iter()
        .filter(|(key, _)| key.from == platform || key.to == platform)
        .map(|(key, row)| linkage_figures(&key.kind, &key.from, &key.to, row))
        .collect();
    pb::GetStatsResponse {
        since: Some(convert::timestamp_ms(since)),
        service_level_secs: u32::try_from(figures.within_secs).unwrap_or(u32::MAX),
        platform: figures.platforms.get(platform).map(call_figures),
        desks,
        linkages,
        conferences: figures
            .conferences
            .get(platform)
            .map(|conferences| pb::ConferenceFigures {
                held: conferences.held,
                median_length_ms: conferences
                    .median_length_ms()
                    .and_then(|ms| u64::try_from(ms).ok())
                    .unwrap_or(0),
                total_length_ms: u64::try_from(conferences.total_length_ms()).unwrap_or(0),
            }),
    }
}

fn call_figures(calls: &CallFigures) -> pb::CallFigures {
    pb::CallFigures {
        offered: calls.offered,
        answered: calls.answered,
        abandoned: calls.abandoned,
        answered_within: calls.answered_within,
        median_answer_ms: calls
            .median_answer_ms()
            .and_then(|ms| u64::try_from(ms).ok())
            .unwrap_or(0),
        median_abandon_ms: calls
            .median_abandon_ms()
            .and_then(|ms| u64::try_from(ms).ok())
            .unwrap_or(0),
    }
}

fn linkage_figures(kind: &str, from: &str, to: &str, row: &LinkageFigures) -> pb::LinkageFigures {
    pb::LinkageFigures {
        kind: kind.to_string(),
        from_platform: if from == "-" {
            String::new()
        } else {
            from.to_string()
        },
        to: to.to_string(),
        requested: row.requested,
        connected: row.connected,
        failed: row
            .failed
            .iter()
            .map(|(status, count)| pb::StatusCount {
                sip_status: u32::from(*status),
                count: *count,
            })
            .collect(),
        median_answer_ms: row
            .median_answer_ms()
            .and_then(|ms| u64::try_from(ms).ok())
            .unwrap_or(0),
    }
}
