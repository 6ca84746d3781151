//! Calls: the sans-IO B2BUA model ([`model`]) with the pure parts of its transfers
//! ([`transfer`]), hotkeys ([`hotkey`]) and the directory of bridged dialogs ([`directory`]), the task that drives one call ([`task`]) and the dispatcher that admits new
//! calls ([`manager`]).

pub mod blocklist;
pub mod directory;
pub mod hotkey;
pub mod link;
pub mod manager;
pub mod model;
pub mod screening;
pub mod task;
pub mod transfer;

pub use model::{Action, Call, CallSettings, EndedBy, NewCall, Outcome};
