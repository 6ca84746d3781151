//! Each platform's recent commands, so that a command repeated with the same `command_id`
//! (a client that lost the result, reconnected and sent it again) is answered as the first
//! one was and not carried out twice.
//!
//! A command is known by its platform and id for [`COMMAND_WINDOW`], the newest
//! [`COMMAND_WINDOW_ENTRIES`] per platform. Its bytes' digest tells a repeat from another
//! command that reuses the id (refused). A repeat that comes while the first is still under
//! way waits for the first one's result. The window is kept in memory: commands do not
//! outlive the calls they act on, which end with the process.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::{pb, COMMAND_WINDOW, COMMAND_WINDOW_ENTRIES};

/// A command's fingerprint: the digest of its encoding (maps are encoded in key order).
pub type Fingerprint = [u8; 32];

/// The fingerprint of `command`.
pub fn fingerprint(command: &pb::Command) -> Fingerprint {
    Sha256::digest(prost::Message::encode_to_vec(command)).into()
}

/// What to do with a command.
pub enum Seen {
    /// First time: carry it out, then [`Pending::finish`] with its result.
    New(Pending),
    /// A repeat: this resolves to the first one's result.
    Repeat(Repeat),
    /// The id was used for another command.
    Reused,
}

/// The recent commands of every platform.
pub struct CommandLog {
    window: Duration,
    capacity: usize,
    platforms: Mutex<HashMap<String, Window>>,
}

#[derive(Default)]
struct Window {
    entries: HashMap<String, Entry>,
    /// When each id came, oldest first.
    order: VecDeque<(Instant, String)>,
}

struct Entry {
    fingerprint: Fingerprint,
    at: Instant,
    result: watch::Receiver<Option<pb::CommandResult>>,
}

impl Default for CommandLog {
    fn default() -> CommandLog {
        CommandLog::new(COMMAND_WINDOW, COMMAND_WINDOW_ENTRIES)
    }
}

impl CommandLog {
    pub fn new(window: Duration, capacity: usize) -> CommandLog {
        CommandLog {
            window,
            capacity: capacity.max(1),
            platforms: Mutex::new(HashMap::new()),
        }
    }

    /// Looks `command_id` up among `platform`'s commands at `now`, entering it if new.
    pub fn begin(
        self: &Arc<Self>,
        platform: &str,
        command_id: &str,
        fingerprint: Fingerprint,
        now: Instant,
    ) -> Seen {
        let mut platforms = self
            .platforms
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let window = platforms.entry(platform.to_string()).or_default();
        window.expire(now, self.window);
        if let Some(entry) = window.entries.get(command_id) {
            if entry.fingerprint != fingerprint {
                return Seen::Reused;
            }
            return Seen::Repeat(Repeat(entry.result.clone()));
        }
        while window.entries.len() >= self.capacity {
            let Some((_, oldest)) = window.order.pop_front() else {
                break;
            };
            window.entries.remove(&oldest);
        }
        let (sender, result) = watch::channel(None);
        window.entries.insert(
            command_id.to_string(),
            Entry {
                fingerprint,
                at: now,
                result,
            },
        );
        window.order.push_back((now, command_id.to_string()));
        Seen::New(Pending {
            log: Arc::clone(self),
            platform: platform.to_string(),
            command_id: command_id.to_string(),
            sender: Some(sender),
        })
    }

    fn forget(&self, platform: &str, command_id: &str) {
        let mut platforms = self
            .platforms
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(window) = platforms.get_mut(platform) {
            window.entries.remove(command_id);
        }
    }
}

impl Window {
    fn expire(&mut self, now: Instant, window: Duration) {
        while let Some((at, _)) = self.order.front() {
            if now.saturating_duration_since(*at) < window {
                break;
            }
            if let Some((at, id)) = self.order.pop_front() {
                // The id may have come again since (after an expiry): only this one goes.
                if self.entries.get(&id).is_some_and(|e| e.at == at) {
                    self.entries.remove(&id);
                }
            }
        }
    }
}

/// A command being carried out for the first time.
pub struct Pending {
    log: Arc<CommandLog>,
    platform: String,
    command_id: String,
    sender: Option<watch::Sender<Option<pb::CommandResult>>>,
}

impl Pending {
    /// The command's result: kept for repeats, which get it with `replayed` set.
    pub fn finish(mut self, result: &pb::CommandResult) {
        if let Some(sender) = self.sender.take() {
            sender.send_replace(Some(result.clone()));
        }
    }
}

impl Drop for Pending {
    /// Not finished (its stream went away mid-command): a repeat is carried out afresh.
    fn drop(&mut self) {
        if self.sender.is_some() {
            self.log.forget(&self.platform, &self.command_id);
        }
    }
}

/// The first command's result, for a repeat.
pub struct Repeat(watch::Receiver<Option<pb::CommandResult>>);

impl Repeat {
    /// Waits for the first command's result (None if it was given up unfinished).
    pub async fn result(mut self) -> Option<pb::CommandResult> {
        let result = self.0.wait_for(Option::is_some).await.ok()?;
        result.clone().map(|mut r| {
            r.replayed = true;
            r
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(id: &str) -> pb::CommandResult {
        pb::CommandResult {
            command_id: id.into(),
            ok: true,
            ..pb::CommandResult::default()
        }
    }

    #[tokio::test]
    async fn a_repeat_gets_the_first_result_and_an_other_command_with_the_id_is_refused() {
        let log = Arc::new(CommandLog::new(Duration::from_secs(600), 10));
        let start = Instant::now();
        let Seen::New(first) = log.begin("12345", "c1", [1; 32], start) else {
            panic!("new");
        };
        // A repeat while the first is under way waits for it.
        let Seen::Repeat(waiting) = log.begin("12345", "c1", [1; 32], start) else {
            panic!("repeat");
        };
        let waiter = tokio::spawn(waiting.result());
        first.finish(&ok("c1"));
        let replayed = waiter.await.ok().flatten();
        assert_eq!(replayed.map(|r| (r.ok, r.replayed)), Some((true, true)));
        assert!(matches!(
            log.begin("12345", "c1", [2; 32], start),
            Seen::Reused
        ));
        // Another platform's ids are its own.
        assert!(matches!(
            log.begin("110", "c1", [2; 32], start),
            Seen::New(_)
        ));
        // After the window, the id is new again.
        let later = start + Duration::from_secs(601);
        assert!(matches!(
            log.begin("12345", "c1", [2; 32], later),
            Seen::New(_)
        ));
    }

    #[tokio::test]
    async fn the_window_keeps_the_newest_and_forgets_what_was_never_finished() {
        let log = Arc::new(CommandLog::new(Duration::from_secs(600), 3));
        let now = Instant::now();
        for id in ["a", "b", "c", "d"] {
            if let Seen::New(pending) = log.begin("110", id, [0; 32], now) {
                pending.finish(&ok(id));
            }
        }
        assert!(
            matches!(log.begin("110", "a", [0; 32], now), Seen::New(_)),
            "the oldest went"
        );
        assert!(matches!(
            log.begin("110", "d", [0; 32], now),
            Seen::Repeat(_)
        ));
        // A command whose stream went away unfinished is carried out again.
        let Seen::New(abandoned) = log.begin("110", "e", [0; 32], now) else {
            panic!("new");
        };
        drop(abandoned);
        assert!(matches!(log.begin("110", "e", [0; 32], now), Seen::New(_)));
    }
}
