//! The JSON file beside each recording: the call, who took part, which platforms may fetch it,
//! and each step of the call at its offset in the audio (milliseconds from the recording's
//! start, the answer; steps before it, the offer and the ringing, are negative).

use std::time::{Instant, SystemTime};

use serde::{Deserialize, Serialize};

use super::{RecordingStart, Step};

/// What the JSON file holds. Field by field in the README.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sidecar {
    pub recording_id: String,
    pub call_id: String,
    /// The WAV file, relative to `[recording] path`.
    pub file: String,
    pub format: String,
    pub caller: String,
    pub called: String,
    pub caller_peer: String,
    pub answered_peer: String,
    /// Unix milliseconds of offset 0 (the answer).
    pub started_at_ms: i64,
    /// The platforms the call involved: their tokens may download it.
    pub platforms: Vec<String>,
    /// The linkages (transfers, conference invitations) in the order asked for.
    pub linkages: Vec<String>,
    /// Conference parties that joined: party 0 is the caller, 1 the answering desk.
    pub parties: Vec<SidecarParty>,
    pub steps: Vec<SidecarStep>,
    /// Set when the call ended and the file was completed.
    pub duration_ms: Option<u64>,
    pub complete: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SidecarParty {
    pub party: u8,
    pub peer: String,
    pub number: String,
}

/// One step at its offset: `step` names it; the other fields go with some steps only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SidecarStep {
    pub offset_ms: i64,
    pub step: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linkage_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub party: Option<u8>,
    /// The platform that paused or resumed the recording.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
}

impl SidecarStep {
    fn named(offset_ms: i64, step: &str) -> SidecarStep {
        SidecarStep {
            offset_ms,
            step: step.to_string(),
            linkage_id: None,
            target: None,
            status: None,
            party: None,
            platform: None,
        }
    }
}

/// Milliseconds from `start` to `at`, negative before it.
pub(super) fn offset_ms(start: Instant, at: Instant) -> i64 {
    match at.checked_duration_since(start) {
        Some(after) => after.as_millis() as i64,
        None => -(start.duration_since(at).as_millis() as i64),
    }
}

impl Sidecar {
    /// A recording answered at `now` (`wall` by the system clock), stored at `file`.
    pub(super) fn new(
        start: &RecordingStart<'_>,
        file: &str,
        wall: SystemTime,
        now: Instant,
    ) -> Sidecar {
        let mut steps = vec![SidecarStep::named(offset_ms(now, start.offered), "offered")];
        if let Some(ringing) = start.ringing {
            steps.push(SidecarStep::named(offset_ms(now, ringing), "ringing"));
        }
        steps.push(SidecarStep::named(0, "answered"));
        Sidecar {
            recording_id: start.call_id.to_string(),
            call_id: start.call_id.to_string(),
            file: file.to_string(),
            format: "WAV, PCM 16-bit, 8000 Hz, 2 channels (left: the caller; right: what the caller heard)".into(),
            caller: start.caller.to_string(),
            called: start.called.to_string(),
            caller_peer: start.caller_peer.to_string(),
            answered_peer: start.answered_peer.to_string(),
            started_at_ms: wall
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
            platforms: start.platforms.clone(),
            linkages: Vec::new(),
            parties: Vec::new(),
            steps,
            duration_ms: None,
            complete: false,
        }
    }

    /// Notes `step` at `offset_ms`.
    pub(super) fn mark(&mut self, offset_ms: i64, step: Step) {
        let mut entry = SidecarStep::named(offset_ms, "");
        let name = match step {
            Step::Platforms(platforms) => {
                self.platforms = platforms;
                return;
            }
            Step::TransferRequested { linkage_id, target } => {
                self.linkages.push(linkage_id.clone());
                entry.linkage_id = Some(linkage_id);
                entry.target = Some(target);
                "transfer_requested"
            }
            Step::ConferenceRequested { linkage_id, target } => {
                self.linkages.push(linkage_id.clone());
                entry.linkage_id = Some(linkage_id);
                entry.target = Some(target);
                "conference_requested"
            }
            Step::TransferRinging { linkage_id } => {
                entry.linkage_id = Some(linkage_id);
                "linkage_ringing"
            }
            Step::TransferAnswered { linkage_id } => {
                entry.linkage_id = Some(linkage_id);
                "linkage_answered"
            }
            Step::TransferFailed { linkage_id, status } => {
                entry.linkage_id = Some(linkage_id);
                entry.status = Some(status);
                "linkage_failed"
            }
            Step::ConferenceJoined {
                party,
                peer,
                number,
            } => {
                if !self.parties.iter().any(|p| p.party == party) {
                    self.parties.push(SidecarParty {
                        party,
                        peer,
                        number,
                    });
                }
                entry.party = Some(party);
                "conference_joined"
            }
            Step::Paused { platform } => {
                entry.platform = Some(platform);
                "recording_paused"
            }
            Step::Resumed { platform } => {
                entry.platform = Some(platform);
                "recording_resumed"
            }
            Step::ConferenceLeft { party } => {
                entry.party = Some(party);
                // Leg B, the desk that answered: the agent leaving the three-way call.
                if party == 1 {
                    "agent_left"
                } else {
                    "conference_left"
                }
            }
        };
        entry.step = name.to_string();
        self.steps.push(entry);
    }

    /// The call ended `duration_ms` after the answer.
    pub(super) fn ended(&mut self, duration_ms: u64) {
        self.steps
            .push(SidecarStep::named(duration_ms as i64, "ended"));
        self.duration_ms = Some(duration_ms);
        self.complete = true;
    }
}
