//! Calls: the sans-IO B2BUA model ([`model`]) with the pure parts of its transfers
//! ([`transfer`]), hotkeys ([`hotkey`]), screening ([`screening`]) and the directory of bridged
//! dialogs ([`directory`]), and a recorded call's SIPREC session ([`siprec`]). The I/O around
//! it (the task that drives a call, admission, the work-order glue) is in [`crate::gateway`].

pub mod blocklist;
pub mod directory;
pub mod hotkey;
pub mod model;
pub mod screening;
pub mod siprec;
pub mod transfer;

pub use model::{Action, Call, CallSettings, EndedBy, NewCall, Outcome};
