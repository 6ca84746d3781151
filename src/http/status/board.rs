//! What the status page shows, as one JSON document (the board): the calls in progress on this
//! node (from the call registry, as the platforms see them), the transfers and conferences
//! under way, the peers, today's figures and last linkages (computed from the store, as
//! `hotline-gateway stats` computes them: no second source), and the store's and the
//! recorder's health (from the metrics). One task keeps it current while anyone watches and
//! hands each new board to every watcher.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::{watch, Notify};

use crate::metrics::{Counter, Gauge, Metrics};
use crate::routing::Router;
use crate::stats::Figures;
use crate::store::{CallDetail, StoreLocation};
use crate::workorder::registry::{CallRegistry, CallSnapshot};

/// The last linkages shown.
const LAST_LINKAGES: usize = 12;
/// How often the board is looked at again without a call changing (peers, health, figures).
const TICK: Duration = Duration::from_secs(1);
/// The store is read again at least this often while watched, and at most this often however
/// busy the calls are.
const FIGURES_EVERY: Duration = Duration::from_secs(10);
const FIGURES_AT_MOST: Duration = Duration::from_secs(1);
/// How long the first board after nobody watched waits for today's figures.
const FIRST_READ: Duration = Duration::from_secs(2);
/// How often a read under way is looked at.
const READ_CHECK: Duration = Duration::from_millis(100);
/// A read that takes longer is told on the page (its figures stay the last read's).
const SLOW_READ: Duration = Duration::from_secs(30);

/// What the board is made of.
pub struct BoardSources {
    pub registry: Arc<CallRegistry>,
    pub router: Arc<Router>,
    pub metrics: Arc<Metrics>,
    pub store: StoreLocation,
    /// This node's name (`[cluster] node`, or empty).
    pub node: String,
    /// `[stats] service_level_secs`.
    pub within_secs: u64,
    /// `[routing] utc_offset`: where today starts.
    pub utc_offset_minutes: i32,
    /// Calls are recorded (`[recording]`).
    pub recording: bool,
    /// `[status] show_numbers`.
    pub show_numbers: bool,
}

/// The board as the page reads it (every time in Unix ms).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Board {
    pub node: String,
    pub now: i64,
    pub day_start: i64,
    pub numbers_masked: bool,
    pub calls: Vec<CallRow>,
    pub peers: Vec<PeerRow>,
    pub today: Option<Today>,
    /// Why today's figures could not be read.
    pub figures_error: Option<String>,
    pub linkages: Vec<LinkageRow>,
    pub store: StoreHealth,
    pub recording: Option<RecordingHealth>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CallRow {
    pub id: String,
    pub citizen: String,
    pub called: String,
    /// `setup`, `ringing`, `queued`, `talking` or `conference`.
    pub state: &'static str,
    pub desk: Option<String>,
    pub platform: Option<String>,
    pub started_at: i64,
    pub answered_at: Option<i64>,
    pub queued_since: Option<i64>,
    pub conference_since: Option<i64>,
    pub linking: Option<LinkingRow>,
    pub ticket: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LinkingRow {
    pub id: String,
    pub kind: String,
    pub target: String,
    pub to_platform: Option<String>,
    pub state: &'static str,
    pub requested_at: i64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PeerRow {
    pub name: String,
    pub platform: Option<String>,
    /// Not found down by its probes (a peer not probed counts as up).
    pub up: bool,
    pub probed: bool,
    /// For a peer the gateway registers at: whether the registration holds.
    pub registered: Option<bool>,
    pub calls: u32,
    pub max_calls: Option<u32>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Today {
    pub within_secs: u64,
    pub platforms: Vec<PlatformRow>,
    pub linkages: Vec<LinkageFiguresRow>,
    pub conferences_held: u64,
    pub conference_median_ms: Option<i64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PlatformRow {
    pub platform: String,
    pub offered: u64,
    pub answered: u64,
    pub abandoned: u64,
    pub answered_within: u64,
    pub answer_rate: Option<f64>,
    pub service_level: Option<f64>,
    pub median_answer_ms: Option<i64>,
    pub median_abandon_ms: Option<i64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LinkageFiguresRow {
    pub kind: String,
    pub from: String,
    pub to: String,
    pub requested: u64,
    pub connected: u64,
    pub failed: u64,
    pub median_answer_ms: Option<i64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LinkageRow {
    pub id: String,
    pub call_id: String,
    pub kind: String,
    pub from: Option<String>,
    pub to: String,
    pub target: String,
    pub requested_at: i64,
    pub answered_at: Option<i64>,
    /// `answered`, `failed`, or None while under way.
    pub outcome: Option<String>,
    pub sip_status: Option<u16>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StoreHealth {
    /// Writing (not holding records in memory for a store that cannot take them).
    pub writing: bool,
    pub held_records: i64,
    pub write_errors: u64,
    pub records_lost: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RecordingHealth {
    pub active: i64,
    pub disk_bytes: i64,
    /// Refusing new recordings: the disk is at its limit.
    pub full: bool,
    pub write_errors: u64,
    pub refused: u64,
}

/// A citizen's number as the page shows it by default: the first three and last four digits
/// (138****8000); shorter numbers keep a digit or two at each end; service numbers (six
/// digits or fewer: 110, 12345) whole.
pub fn mask_number(number: &str) -> String {
    let chars: Vec<char> = number.chars().collect();
    let (head, tail) = match chars.len() {
        0..=6 => return number.to_string(),
        7..=10 => (2, 2),
        _ => (3, 4),
    };
    let mut masked: String = chars[..head].iter().collect();
    masked.extend(std::iter::repeat_n('*', chars.len() - head - tail));
    masked.extend(&chars[chars.len() - tail..]);
    masked
}

/// A number as the page shows it.
fn shown(number: &str, show_numbers: bool) -> String {
    if show_numbers {
        number.to_string()
    } else {
        mask_number(number)
    }
}

fn call_row(call: &CallSnapshot, show_numbers: bool) -> CallRow {
    let state = if call.conference_since.is_some() {
        "conference"
    } else if call.answered_at.is_some() {
        "talking"
    } else if call.queued_since.is_some() {
        "queued"
    } else if call.ringing {
        "ringing"
    } else {
        "setup"
    };
    // Every number, not only the caller's: on a call back the citizen is the one called.
    let number = |number: &str| shown(number, show_numbers);
    CallRow {
        id: call.call_id.clone(),
        citizen: number(&call.citizen_number),
        called: number(&call.called_number),
        state,
        desk: call.called_leg.as_ref().map(|leg| leg.peer.clone()),
        platform: call
            .called_leg
            .as_ref()
            .and_then(|leg| leg.platform.clone()),
        started_at: call.started_at,
        answered_at: call.answered_at,
        queued_since: call.queued_since,
        conference_since: call.conference_since,
        linking: call.linking.as_ref().map(|linking| LinkingRow {
            id: linking.linkage_id.clone(),
            kind: linking.kind.clone(),
            target: number(&linking.target),
            to_platform: linking.to_platform.clone(),
            state: linking.state,
            requested_at: linking.requested_at,
        }),
        ticket: call.ticket.as_ref().map(|ticket| ticket.number.clone()),
    }
}

/// Today's figures and last linkages, from the calls started since `day_start`.
fn today(details: &[CallDetail], router: &Router, within_secs: u64) -> (Today, Vec<LinkageRow>) {
    let platform_of = |peer: &str| router.peer_by_name(peer).and_then(|p| p.platform.clone());
    // The page shows platforms, not routes.
    let figures: Figures = crate::stats::figures(details, platform_of, |_, _| None, within_secs);
    let platforms = figures
        .platforms
        .iter()
        .map(|(platform, row)| PlatformRow {
            platform: platform.clone(),
            offered: row.offered,
            answered: row.answered,
            abandoned: row.abandoned,
            answered_within: row.answered_within,
            answer_rate: row.answer_rate(),
            service_level: row.service_level(),
            median_answer_ms: row.median_answer_ms(),
            median_abandon_ms: row.median_abandon_ms(),
        })
        .collect();
    let linkages = figures
        .linkages
        .iter()
        .map(|(key, row)| LinkageFiguresRow {
            kind: key.kind.clone(),
            from: key.from.clone(),
            to: key.to.clone(),
            requested: row.requested,
            connected: row.connected,
            failed: row.failed_total(),
            median_answer_ms: row.median_answer_ms(),
        })
        .collect();
    let conferences = figures.conferences.values();
    let held = conferences.clone().map(|c| c.held).sum();
    // The platforms' medians' median would mislead: the busiest platform's stands for all.
    let median = figures
        .conferences
        .values()
        .max_by_key(|c| c.held)
        .and_then(crate::stats::ConferenceFigures::median_length_ms);
    let mut last: Vec<LinkageRow> = details
        .iter()
        .flat_map(|detail| detail.linkages.iter())
        .map(|linkage| LinkageRow {
            id: linkage.id.clone(),
            call_id: linkage.call_id.clone(),
            kind: linkage.kind.clone(),
            from: linkage.from_platform.clone(),
            to: linkage
                .to_platform
                .clone()
                .unwrap_or_else(|| linkage.target.clone()),
            target: linkage.target.clone(),
            requested_at: linkage.requested_at,
            answered_at: linkage.answered_at,
            outcome: linkage.outcome.clone(),
            sip_status: linkage.sip_status,
        })
        .collect();
    last.sort_by(|x, y| (y.requested_at, &y.id).cmp(&(x.requested_at, &x.id)));
    last.truncate(LAST_LINKAGES);
    let today = Today {
        within_secs,
        platforms,
        linkages,
        conferences_held: held,
        conference_median_ms: median,
    };
    (today, last)
}

/// Unix ms of the local midnight before `now`.
fn day_start(now: i64, utc_offset_minutes: i32) -> i64 {
    let offset = i64::from(utc_offset_minutes) * 60_000;
    (now + offset).div_euclid(86_400_000) * 86_400_000 - offset
}

/// Today's part of the board, as last read from the store.
#[derive(Clone, Default)]
struct StoreView {
    today: Option<Today>,
    linkages: Vec<LinkageRow>,
    error: Option<String>,
}

impl BoardSources {
    fn board(&self, now: i64, view: &StoreView) -> Board {
        let calls = self
            .registry
            .all()
            .iter()
            .map(|call| call_row(call, self.show_numbers))
            .collect();
        let peers = self
            .router
            .peers()
            .iter()
            .map(|peer| PeerRow {
                name: peer.name.clone(),
                platform: peer.platform.clone(),
                up: peer.is_up(),
                probed: peer.probe_interval.is_some(),
                registered: peer
                    .registration
                    .as_ref()
                    .map(|_| self.metrics.peer_registered(&peer.name).unwrap_or(false)),
                calls: peer.seats.taken(),
                max_calls: peer.seats.max(),
            })
            .collect();
        let metrics = &self.metrics;
        Board {
            node: self.node.clone(),
            now,
            day_start: day_start(now, self.utc_offset_minutes),
            numbers_masked: !self.show_numbers,
            calls,
            peers,
            today: view.today.clone().map(|mut today| {
                for row in &mut today.linkages {
                    row.to = shown(&row.to, self.show_numbers);
                }
                today
            }),
            figures_error: view.error.clone(),
            linkages: view
                .linkages
                .iter()
                .map(|linkage| LinkageRow {
                    to: shown(&linkage.to, self.show_numbers),
                    target: shown(&linkage.target, self.show_numbers),
                    ..linkage.clone()
                })
                .collect(),
            store: StoreHealth {
                writing: metrics.gauge(Gauge::StoreDegraded) == 0,
                held_records: metrics.gauge(Gauge::StoreHeldRecords),
                write_errors: metrics.counter(Counter::StoreWriteErrors),
                records_lost: metrics.counter(Counter::StoreRecordsLost),
            },
            recording: self.recording.then(|| RecordingHealth {
                active: metrics.gauge(Gauge::RecordingsActive),
                disk_bytes: metrics.gauge(Gauge::RecordingDiskBytes),
                full: metrics.gauge(Gauge::RecordingFull) > 0,
                write_errors: metrics.counter(Counter::RecordingWriteErrors),
                refused: metrics.counter(Counter::RecordingsRefused),
            }),
        }
    }

    /// Today's figures and last linkages, read from the store (blocking).
    fn read_store(&self, now: i64) -> StoreView {
        let since = day_start(now, self.utc_offset_minutes);
        match self.store.call_details_since(since, usize::MAX) {
            Ok(details) => {
                let (today, linkages) = today(&details, &self.router, self.within_secs);
                StoreView {
                    today: Some(today),
                    linkages,
                    error: None,
                }
            }
            Err(error) => StoreView {
                error: Some(format!("{}: {error}", self.store)),
                ..StoreView::default()
            },
        }
    }
}

/// The latest board (as JSON; empty while nobody watched) for everyone watching.
pub struct BoardFeed {
    boards: watch::Sender<Arc<String>>,
    wanted: Notify,
}

impl BoardFeed {
    pub(super) fn new() -> BoardFeed {
        BoardFeed {
            boards: watch::channel(Arc::new(String::new())).0,
            wanted: Notify::new(),
        }
    }

    /// Follows the boards from now on: the first one within a second or two of a start.
    pub fn watch(&self) -> watch::Receiver<Arc<String>> {
        let watching = self.boards.subscribe();
        self.wanted.notify_one();
        watching
    }
}

/// Starts the task that keeps the board; it ends when `stop` turns true.
pub fn start(sources: BoardSources, stop: watch::Receiver<bool>) -> Arc<BoardFeed> {
    let feed = Arc::new(BoardFeed::new());
    tokio::spawn(keep(Arc::new(sources), Arc::clone(&feed), stop));
    feed
}

/// The store's part of the board: read by a blocking task of its own, so a slow store slows
/// only today's figures, never the calls' rows; read again no sooner than ten times its last
/// read took (a busy day's long read is not run back to back).
struct StoreReads {
    view: StoreView,
    /// The read under way, and when it started.
    reading: Option<(tokio::task::JoinHandle<StoreView>, tokio::time::Instant)>,
    /// When the last read ended, and how long it took.
    last: Option<(tokio::time::Instant, Duration)>,
    due: bool,
}

impl StoreReads {
    /// Takes a finished read, starts one that is due; the view as it now stands.
    async fn poll(&mut self, sources: &Arc<BoardSources>, now: i64) -> &StoreView {
        if let Some((reading, started)) = self.reading.take() {
            if reading.is_finished() {
                self.view = reading.await.unwrap_or_else(|_| StoreView {
                    error: Some("the store reader stopped".into()),
                    ..StoreView::default()
                });
                self.last = Some((tokio::time::Instant::now(), started.elapsed()));
            } else {
                if started.elapsed() >= SLOW_READ {
                    self.view.error = Some(format!(
                        "reading today's figures from {} takes over {} s",
                        sources.store,
                        SLOW_READ.as_secs()
                    ));
                }
                self.reading = Some((reading, started));
                return &self.view;
            }
        }
        let allowed = self
            .last
            .is_none_or(|(ended, took)| ended.elapsed() >= FIGURES_AT_MOST.max(took * 10));
        let stale = self
            .last
            .is_none_or(|(ended, _)| ended.elapsed() >= FIGURES_EVERY);
        if (self.due || stale) && allowed {
            self.due = false;
            let sources = Arc::clone(sources);
            let reading = tokio::task::spawn_blocking(move || sources.read_store(now));
            self.reading = Some((reading, tokio::time::Instant::now()));
        }
        &self.view
    }
}

async fn keep(sources: Arc<BoardSources>, feed: Arc<BoardFeed>, mut stop: watch::Receiver<bool>) {
    let mut calls_changed = sources.registry.subscribe();
    let mut store = StoreReads {
        view: StoreView::default(),
        reading: None,
        last: None,
        due: true,
    };
    let mut shown: Option<Board> = None;
    loop {
        if feed.boards.receiver_count() == 0 {
            // Nobody watches: the next watcher gets a fresh board, not this one.
            feed.boards.send_replace(Arc::new(String::new()));
            shown = None;
            tokio::select! {
                () = feed.wanted.notified() => {}
                _ = stop.changed() => return,
            }
            // What was read before the wait may be of another day: read anew, and wait a
            // little for it before the first board.
            store.view = StoreView::default();
            store.due = true;
            let now = crate::store::unix_millis(SystemTime::now());
            let _ = store.poll(&sources, now).await;
            if let Some((reading, started)) = store.reading.take() {
                let mut reading = reading;
                match tokio::time::timeout(FIRST_READ, &mut reading).await {
                    Ok(read) => {
                        store.view = read.unwrap_or_default();
                        store.last = Some((tokio::time::Instant::now(), started.elapsed()));
                    }
                    Err(_) => store.reading = Some((reading, started)),
                }
            }
            continue;
        }
        let now = crate::store::unix_millis(SystemTime::now());
        let view = store.poll(&sources, now).await.clone();
        let board = sources.board(now, &view);
        // Only what changed goes out (the page counts the seconds itself).
        let unchanged = shown.as_ref().is_some_and(|shown| {
            Board {
                now,
                ..shown.clone()
            } == board
        });
        if !unchanged {
            if let Ok(json) = serde_json::to_string(&board) {
                feed.boards.send_replace(Arc::new(json));
            }
            shown = Some(board);
        }
        // A read under way is looked at again shortly; otherwise every tick.
        let wait = if store.reading.is_some() {
            READ_CHECK
        } else {
            TICK
        };
        tokio::select! {
            changed = calls_changed.changed() => {
                if changed.is_err() {
                    return;
                }
                store.due = true;
                // A step often changes a call twice in a row: show both as one.
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = stop.changed() => return,
                }
            }
            () = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks() {
        assert_eq!(mask_number("13800138000"), "138****8000");
        assert_eq!(mask_number("+8613800138000"), "+86*******8000");
        assert_eq!(mask_number("88001234"), "88****34");
        assert_eq!(mask_number("12345"), "12345");
        assert_eq!(mask_number("110"), "110");
        assert_eq!(mask_number(""), "");
    }

    /// A call back (the agent presents 12345, the citizen is called) and a transfer to a
    /// mobile: no whole citizen's number, service numbers whole; all of it with show_numbers.
    #[test]
    fn every_number_is_masked() {
        let call = CallSnapshot {
            call_id: "g1".into(),
            citizen_number: "12345".into(),
            called_number: "13800138000".into(),
            linking: Some(crate::workorder::registry::Linking {
                target: "13912345678".into(),
                ..Default::default()
            }),
            ..CallSnapshot::default()
        };
        let row = call_row(&call, false);
        assert_eq!(row.citizen, "12345");
        assert_eq!(row.called, "138****8000");
        assert_eq!(row.linking.map(|l| l.target), Some("139****5678".into()));
        let row = call_row(&call, true);
        assert_eq!(row.called, "13800138000");
        assert_eq!(row.state, "setup");
    }

    #[test]
    fn today_starts_at_local_midnight() {
        // 2026-12-06 01:30 at +08:00 is 2026-12-05 17:30 UTC; its day began at 16:00 UTC.
        let now = 1_796_491_800_000;
        assert_eq!(day_start(now, 480), 1_796_486_400_000);
        assert_eq!(day_start(now, 0), 1_796_428_800_000);
    }
}
