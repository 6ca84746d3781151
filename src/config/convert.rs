//! The config tree converted into the typed values the parts take, so that the parts never
//! read the tree themselves. The tree holds the values the parts parse already (`text.rs`), so
//! these conversions cannot fail.

use std::net::SocketAddr;

use rustls::pki_types::ServerName;

use super::{Config, HotkeyConfig, TransportKind};
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

impl Config {
    /// The `transport = "tls"` peers: address and the name their certificate must carry
    /// (`tls_name`, else the peer's IP address).
    pub fn tls_peer_names(&self) -> Vec<(SocketAddr, ServerName<'static>)> {
        self.peers
            .iter()
            .filter(|peer| peer.transport == TransportKind::Tls)
            .map(|peer| {
                let name = peer
                    .tls_name
                    .clone()
                    .unwrap_or_else(|| ServerName::IpAddress(peer.address.ip().into()));
                (peer.address, name)
            })
            .collect()
    }
}
