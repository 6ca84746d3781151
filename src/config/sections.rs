//! The sections of the configuration for what the gateway plays and exports:
//! `[announcements]` (with `[announcements.whisper]`), `[stats]`, `[cdr]`, `[hep]` and `[status]`.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

/// `[stats]`: how the figures are counted.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsConfig {
    /// The service level: a call answered within this many seconds of its start counts in
    /// `hotline_desk_calls_answered_within_total` (default 20; 1 to 3600).
    #[serde(default = "default_service_level_secs")]
    pub service_level_secs: u64,
}

impl Default for StatsConfig {
    fn default() -> StatsConfig {
        StatsConfig {
            service_level_secs: default_service_level_secs(),
        }
    }
}

fn default_service_level_secs() -> u64 {
    20
}

/// `[cdr]`: where the daily call detail record files go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CdrConfig {
    /// The directory (made if missing; relative to the working directory) holding
    /// `YYYY-MM-DD.jsonl`, one line per call ended that day (UTC).
    pub path: PathBuf,
}

/// `[hep]`: where the copies of the SIP messages go.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HepConfig {
    /// The capture server's address (Homer's heplify-server listens on 9060).
    pub address: SocketAddr,
    /// The capture agent id the server shows for this gateway (default 2001).
    #[serde(default = "default_hep_capture_id")]
    pub capture_id: u32,
}

fn default_hep_capture_id() -> u32 {
    2001
}

/// `[announcements]`: WAV files (8000 Hz, mono, 16-bit PCM or G.711 A-law/µ-law, 20 ms to
/// 120 s; relative paths from the working directory), read once at start and checked by
/// `--check`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnnouncementsConfig {
    /// Played to the citizen while a transfer target rings with no agent left on the line
    /// (e.g. "正在为您转接110，请勿挂机"), repeated; without it, the ringback tone.
    #[serde(default)]
    pub transfer: Option<PathBuf>,
    /// Played once to a caller whose route has no desk left (every peer busy, unavailable
    /// or failed), as early media before the failure (e.g. "坐席忙，请稍后再拨"); without it,
    /// the failure at once.
    #[serde(default)]
    pub no_desk: Option<PathBuf>,
    /// Played, repeated, to a caller waiting in a route's queue (`[[route]] queue_secs`);
    /// without it, the ringback tone.
    #[serde(default)]
    pub queue: Option<PathBuf>,
    /// Silence between two plays of an announcement, in ms (default 1000; at most 60000).
    #[serde(default = "default_announcement_gap_ms")]
    pub gap_ms: u32,
    /// `[announcements.whisper]`: played once to a transfer target's operator when it
    /// answers, before it hears the citizen, chosen by the urgency class of the call's ticket.
    #[serde(default)]
    pub whisper: WhisperConfig,
}

/// `[announcements.whisper]`: one prompt per urgency class of the call's ticket (a class
/// without one, or a call without a ticket and no `unclassified`, is bridged at once).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WhisperConfig {
    /// The platforms (a `[[peer]]`'s `platform`) whose answering operators hear it (default:
    /// a transfer target at any platform).
    #[serde(default)]
    pub platforms: Vec<String>,
    /// Class D, urgent (e.g. "紧急工单").
    #[serde(default)]
    pub class_d: Option<PathBuf>,
    /// Class A, immediate.
    #[serde(default)]
    pub class_a: Option<PathBuf>,
    /// Class B, within 5 working days.
    #[serde(default)]
    pub class_b: Option<PathBuf>,
    /// Class C, planned.
    #[serde(default)]
    pub class_c: Option<PathBuf>,
    /// A call with no ticket, or whose ticket has no class.
    #[serde(default)]
    pub unclassified: Option<PathBuf>,
}

impl WhisperConfig {
    /// Each prompt with its key under `announcements.whisper`.
    pub fn files(&self) -> [(&'static str, &Option<PathBuf>); 5] {
        [
            ("announcements.whisper.class_d", &self.class_d),
            ("announcements.whisper.class_a", &self.class_a),
            ("announcements.whisper.class_b", &self.class_b),
            ("announcements.whisper.class_c", &self.class_c),
            ("announcements.whisper.unclassified", &self.unclassified),
        ]
    }
}

fn default_announcement_gap_ms() -> u32 {
    1000
}

/// `[status]`: who may see the live status page (`GET /` on `api.http`) and how it shows the
/// citizens' numbers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusConfig {
    /// A shared secret that opens the page from anywhere: `Authorization: Bearer <token>`, or
    /// `GET /?token=<token>` once (a cookie holds it then). None: only `allow` opens it.
    #[serde(default)]
    pub token: Option<String>,
    /// Networks that see the page without the token, the management network's (default the
    /// loopback addresses; `[]` for the token only).
    #[serde(
        default = "default_status_allow",
        deserialize_with = "super::text::list"
    )]
    pub allow: Vec<crate::routing::Cidr>,
    /// Show citizens' numbers whole (default false: 138****8000).
    #[serde(default)]
    pub show_numbers: bool,
}

impl Default for StatusConfig {
    fn default() -> StatusConfig {
        StatusConfig {
            token: None,
            allow: default_status_allow(),
            show_numbers: false,
        }
    }
}

fn default_status_allow() -> Vec<crate::routing::Cidr> {
    ["127.0.0.0/8", "::1/128"]
        .iter()
        .filter_map(|text| crate::routing::Cidr::parse(text).ok())
        .collect()
}
