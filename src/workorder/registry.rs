//! The calls in progress, as the work-order link needs them: each call's command queue (its
//! task carries the commands out on its call model) and a snapshot of what the platforms may
//! see of it (and who they are, for permissions).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};

use dashmap::DashMap;
use tokio::sync::{mpsc, oneshot, watch};

use super::{LegInfo, Ticket};

/// Why a command was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    UnknownCall,
    NotAllowedNow,
    NotPermitted,
    NoRoute,
    Invalid,
    Conflict,
    Unavailable,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CommandError {
    pub code: ErrorCode,
    pub message: String,
}

impl CommandError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> CommandError {
        CommandError {
            code,
            message: message.into(),
        }
    }
}

/// What a command that was carried out tells its platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CommandDone {
    /// For an attached ticket: its version now.
    pub ticket_version: u64,
}

/// A command's outcome.
pub type CommandOutcome = Result<CommandDone, CommandError>;

/// Where a call's task sends a command's outcome (once the events it caused are committed).
pub type CommandReply = oneshot::Sender<CommandOutcome>;

/// A platform's command to one call.
#[derive(Debug)]
pub enum CallCommand {
    AttachTicket {
        platform: String,
        ticket: Box<Ticket>,
        /// The version the update is based on (0: none attached; None: whatever is).
        base_version: Option<u64>,
        reply: CommandReply,
    },
    Transfer {
        platform: String,
        target: String,
        reply: CommandReply,
    },
    Conference {
        platform: String,
        target: String,
        reply: CommandReply,
    },
    /// One party (None: the whole call).
    HangUp {
        platform: String,
        party: Option<u32>,
        reply: CommandReply,
    },
    Mute {
        party: u32,
        muted: bool,
        reply: CommandReply,
    },
    /// Pause (`paused`) or resume the call's recording.
    Recording {
        platform: String,
        paused: bool,
        reply: CommandReply,
    },
}

/// What the platforms may see of a call in progress.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CallSnapshot {
    pub call_id: String,
    pub citizen_number: String,
    pub called_number: String,
    pub caller_leg: LegInfo,
    pub called_leg: Option<LegInfo>,
    /// Unix milliseconds.
    pub started_at: i64,
    pub answered_at: Option<i64>,
    pub ticket: Option<Ticket>,
    /// Every platform the call has involved (its legs' peers', its transfer targets'): those
    /// get its events and may command it.
    pub platforms: BTreeSet<String>,
    /// The call's recording, once it is recorded.
    pub recording: Option<super::RecordingInfo>,
    /// The desk's phone rang (180/183).
    pub ringing: bool,
    /// Since when (Unix ms) it waits in its route's queue for a desk.
    pub queued_since: Option<i64>,
    /// The transfer or conference guest under way.
    pub linking: Option<Linking>,
    /// Since when (Unix ms) the gateway mixes a conference for it.
    pub conference_since: Option<i64>,
}

/// A transfer or a conference guest under way: asked for, ringing or queued at the target.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Linking {
    pub linkage_id: String,
    /// `transfer` or `conference`.
    pub kind: String,
    /// The number asked for (110, 119 ...).
    pub target: String,
    pub to_platform: Option<String>,
    /// `requested`, `ringing` or `queued`.
    pub state: &'static str,
    /// Unix ms of the request.
    pub requested_at: i64,
}

struct Entry {
    commands: mpsc::UnboundedSender<CallCommand>,
    snapshot: Arc<Mutex<CallSnapshot>>,
}

/// Bumped whenever a call enters, leaves or changes what the platforms see of it (the status
/// page follows it).
pub type ChangeSignal = Arc<watch::Sender<u64>>;

/// The calls in progress, by their gateway id.
pub struct CallRegistry {
    calls: DashMap<String, Entry>,
    changes: ChangeSignal,
}

impl Default for CallRegistry {
    fn default() -> CallRegistry {
        CallRegistry {
            calls: DashMap::new(),
            changes: Arc::new(watch::channel(0).0),
        }
    }
}

/// Tells the followers of `signal` that the calls changed.
pub fn changed(signal: &ChangeSignal) {
    signal.send_modify(|version| *version = version.wrapping_add(1));
}

impl CallRegistry {
    /// The signal a call's task bumps when it publishes a change.
    pub fn changes(&self) -> ChangeSignal {
        Arc::clone(&self.changes)
    }

    /// Follows the changes (see [`ChangeSignal`]).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Every call in progress, oldest first.
    pub fn all(&self) -> Vec<CallSnapshot> {
        let mut calls: Vec<CallSnapshot> = self
            .calls
            .iter()
            .map(|entry| lock(&entry.snapshot).clone())
            .collect();
        calls.sort_by(|x, y| (x.started_at, &x.call_id).cmp(&(y.started_at, &y.call_id)));
        calls
    }

    /// Enters a call; its task receives the commands on the returned queue and keeps
    /// `snapshot` up to date.
    pub fn insert(
        &self,
        snapshot: Arc<Mutex<CallSnapshot>>,
    ) -> mpsc::UnboundedReceiver<CallCommand> {
        let (commands, inbox) = mpsc::unbounded_channel();
        let id = lock(&snapshot).call_id.clone();
        self.calls.insert(id, Entry { commands, snapshot });
        changed(&self.changes);
        inbox
    }

    pub fn remove(&self, call_id: &str) {
        self.calls.remove(call_id);
        changed(&self.changes);
    }

    /// Hands `command` to the call's task if the call involves `platform`.
    ///
    /// # Errors
    /// [`ErrorCode::UnknownCall`] for a call not in progress, [`ErrorCode::NotPermitted`] for a
    /// call that does not involve `platform`.
    pub fn command(
        &self,
        call_id: &str,
        platform: &str,
        command: CallCommand,
    ) -> Result<(), CommandError> {
        let Some(entry) = self.calls.get(call_id) else {
            return Err(CommandError::new(
                ErrorCode::UnknownCall,
                format!("no call {call_id} in progress"),
            ));
        };
        if !lock(&entry.snapshot).platforms.contains(platform) {
            return Err(CommandError::new(
                ErrorCode::NotPermitted,
                format!("call {call_id} does not involve platform {platform}"),
            ));
        }
        entry.commands.send(command).map_err(|_| {
            CommandError::new(ErrorCode::UnknownCall, format!("call {call_id} has ended"))
        })
    }

    /// Up to `limit` of the calls in progress that involve `platform`, oldest first (by start,
    /// then id), after `after`; and whether more follow.
    pub fn list(
        &self,
        platform: &str,
        after: Option<&(i64, String)>,
        limit: usize,
    ) -> (Vec<CallSnapshot>, bool) {
        let mut calls: Vec<CallSnapshot> = self
            .calls
            .iter()
            .filter_map(|entry| {
                let snapshot = lock(&entry.snapshot);
                let position = (snapshot.started_at, snapshot.call_id.clone());
                let wanted = snapshot.platforms.contains(platform)
                    && after.is_none_or(|after| position > *after);
                wanted.then(|| snapshot.clone())
            })
            .collect();
        calls.sort_by(|x, y| (x.started_at, &x.call_id).cmp(&(y.started_at, &y.call_id)));
        let more = calls.len() > limit;
        calls.truncate(limit);
        (calls, more)
    }

    /// Whether this node carries `call_id` now.
    pub fn carries(&self, call_id: &str) -> bool {
        self.calls.contains_key(call_id)
    }

    /// One call in progress, if it involves `platform`.
    ///
    /// # Errors
    /// As [`CallRegistry::command`].
    pub fn get(&self, call_id: &str, platform: &str) -> Result<CallSnapshot, CommandError> {
        let Some(entry) = self.calls.get(call_id) else {
            return Err(CommandError::new(
                ErrorCode::UnknownCall,
                format!("no call {call_id} in progress"),
            ));
        };
        let snapshot = lock(&entry.snapshot).clone();
        if snapshot.platforms.contains(platform) {
            Ok(snapshot)
        } else {
            Err(CommandError::new(
                ErrorCode::NotPermitted,
                format!("call {call_id} does not involve platform {platform}"),
            ))
        }
    }
}

/// The snapshot's lock: each holder only reads or replaces fields, so a poisoned one is whole.
pub fn lock(snapshot: &Mutex<CallSnapshot>) -> std::sync::MutexGuard<'_, CallSnapshot> {
    snapshot.lock().unwrap_or_else(PoisonError::into_inner)
}
