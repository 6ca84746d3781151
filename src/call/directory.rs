//! Which dialogs each bridged call joins, for attended transfer (RFC 3891, RFC 5589 §7).
//!
//! An agent's consultation call to 110 runs through the gateway like any call: the agent's
//! dialog with us (that call's leg A) and ours with 110 (its leg B). The agent's REFER names the
//! former in `Replaces`; 110 only knows the latter. Calls enter their pair when answered and
//! leave when they finish; the lookup gives the dialog to name in the INVITE with Replaces that
//! the gateway sends 110 on the citizen's behalf.

use dashmap::DashMap;

use crate::sip::dialog::Dialog;

/// A dialog as one of its ends sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DialogId {
    pub call_id: String,
    pub local_tag: String,
    pub remote_tag: String,
}

impl DialogId {
    /// The dialog as `dialog`'s end (ours) sees it.
    pub fn of(dialog: &Dialog) -> DialogId {
        DialogId {
            call_id: dialog.call_id().to_string(),
            local_tag: dialog.local_tag().to_string(),
            remote_tag: dialog.remote_tag().to_string(),
        }
    }

    /// The dialog a `Replaces` value names (RFC 3891 §6.1: `call-id;to-tag=..;from-tag=..`),
    /// seen from the UA it was sent to: the to-tag is that UA's own tag.
    pub fn from_replaces(value: &str) -> Option<DialogId> {
        let mut parts = value.split(';').map(str::trim);
        let call_id = parts.next().filter(|c| !c.is_empty())?.to_string();
        let (mut to_tag, mut from_tag) = (None, None);
        for part in parts {
            match part.split_once('=') {
                Some((name, tag)) if name.eq_ignore_ascii_case("to-tag") => to_tag = Some(tag),
                Some((name, tag)) if name.eq_ignore_ascii_case("from-tag") => from_tag = Some(tag),
                _ => {}
            }
        }
        Some(DialogId {
            call_id,
            local_tag: to_tag?.to_string(),
            remote_tag: from_tag?.to_string(),
        })
    }

    /// The `Replaces` value naming this dialog to its remote end.
    pub fn replaces_for_remote(&self) -> String {
        format!(
            "{};to-tag={};from-tag={}",
            self.call_id, self.remote_tag, self.local_tag
        )
    }
}

/// The peer-side dialog of a bridged call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerDialog {
    pub dialog: DialogId,
    /// The `[[peer]]` it is with.
    pub peer: String,
}

/// Bridged calls: our leg-A dialog -> that call's leg-B dialog.
#[derive(Debug, Default)]
pub struct Directory {
    bridged: DashMap<DialogId, PeerDialog>,
}

impl Directory {
    pub fn insert(&self, caller_side: DialogId, peer_side: PeerDialog) {
        self.bridged.insert(caller_side, peer_side);
    }

    pub fn remove(&self, caller_side: &DialogId) {
        self.bridged.remove(caller_side);
    }

    pub fn peer_side(&self, caller_side: &DialogId) -> Option<PeerDialog> {
        self.bridged.get(caller_side).map(|entry| entry.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_values_name_dialogs_from_the_recipients_side() {
        let id = DialogId::from_replaces("abc@host; to-tag=gw1 ;from-tag=agent7");
        assert_eq!(
            id,
            Some(DialogId {
                call_id: "abc@host".into(),
                local_tag: "gw1".into(),
                remote_tag: "agent7".into(),
            })
        );
        assert_eq!(DialogId::from_replaces("abc;to-tag=1"), None);
        assert_eq!(DialogId::from_replaces(";to-tag=1;from-tag=2"), None);
        let ours = DialogId {
            call_id: "b2@gw".into(),
            local_tag: "ours".into(),
            remote_tag: "police".into(),
        };
        assert_eq!(
            ours.replaces_for_remote(),
            "b2@gw;to-tag=police;from-tag=ours"
        );
    }
}
