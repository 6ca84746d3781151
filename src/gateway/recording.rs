//! A call's recording as its task keeps it: begun at the answer (unless the line or the
//! number says `record = false`, or the disk budget is reached), marked at each linkage step
//! and conference change, ended with the call (in [`super::driver`]).

use crate::call::model::{ConferenceUpdate, LinkageUpdate};
use crate::media::recording::{Recording, RecordingSink, RecordingStart, Step};
use crate::store::LinkageRecord;
use crate::workorder::RecordingInfo;

use super::driver::{driver_now, CallServices, Records};
use super::link::Link;

/// Begins the recording of a call answered by `answered_peer`, if it is recorded: the relay's
/// sink, for [`crate::media::MediaCommand::Record`].
pub(super) fn begin(
    records: &mut Records,
    answered_peer: &str,
    services: &CallServices,
) -> Option<RecordingSink> {
    let (recorder, router) = services.recording.as_ref()?;
    if records.recording.is_some() {
        return None;
    }
    let call = &records.call;
    let line_refuses = [call.a_peer.as_str(), answered_peer]
        .iter()
        .any(|name| router.peer_by_name(name).is_some_and(|peer| !peer.record));
    if line_refuses || !router.records(&call.called) {
        return None;
    }
    let start = RecordingStart {
        call_id: &call.id,
        caller: &call.caller,
        called: &call.called,
        caller_peer: &call.a_peer,
        answered_peer,
        platforms: records.link.platforms(),
        offered: records.offered,
        ringing: records.ringing,
    };
    let recording = recorder.begin(start, driver_now())?;
    records.call.recording = Some(recording.path().display().to_string());
    records.link.recorded(RecordingInfo {
        id: recording.id().to_string(),
        path: recording.path().display().to_string(),
    });
    tracing::info!(file = %recording.path().display(), "call recorded");
    let sink = recording.sink();
    records.recording = Some(recording);
    Some(sink)
}

/// Marks a linkage step (and the platforms involved, which a new target may have added).
pub(super) fn linkage(
    recording: Option<&Recording>,
    link: &Link,
    update: &LinkageUpdate,
    linkage: &LinkageRecord,
) {
    let Some(recording) = recording else {
        return;
    };
    let now = driver_now();
    let conference = linkage.kind == "conference";
    let step = match update.clone() {
        LinkageUpdate::Requested {
            linkage_id, target, ..
        } if conference => Step::ConferenceRequested { linkage_id, target },
        LinkageUpdate::Requested {
            linkage_id, target, ..
        } => Step::TransferRequested { linkage_id, target },
        LinkageUpdate::Retried { .. } => return,
        LinkageUpdate::Ringing { linkage_id } => Step::TransferRinging { linkage_id },
        LinkageUpdate::Answered { linkage_id } => Step::TransferAnswered { linkage_id },
        LinkageUpdate::Failed { linkage_id, status } => Step::TransferFailed { linkage_id, status },
    };
    recording.mark(now, step);
    recording.mark(now, Step::Platforms(link.platforms()));
}

/// Marks a conference party joining or leaving.
pub(super) fn conference(recording: Option<&Recording>, update: &ConferenceUpdate) {
    let Some(recording) = recording else {
        return;
    };
    let step = match update {
        ConferenceUpdate::Joined {
            party,
            peer,
            number,
        } => Step::ConferenceJoined {
            party: party.index() as u8,
            peer: peer.clone(),
            number: number.clone(),
        },
        ConferenceUpdate::Left { party } => Step::ConferenceLeft {
            party: party.index() as u8,
        },
        ConferenceUpdate::Started | ConferenceUpdate::Ended => return,
    };
    recording.mark(driver_now(), step);
}
