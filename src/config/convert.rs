//! The config tree converted into the typed values the parts take, so that the parts never
//! read the tree themselves.

use super::HotkeyConfig;
use crate::call::hotkey::Hotkey;

impl From<&HotkeyConfig> for Hotkey {
    fn from(config: &HotkeyConfig) -> Hotkey {
        Hotkey {
            dtmf: config.dtmf.clone(),
            action: config.action,
            target: config.target.clone(),
        }
    }
}
