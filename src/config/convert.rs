//! The config tree converted into the typed values the parts take, so that the parts never
//! read the tree themselves. The tree holds the values the parts parse already (`text.rs`), so
//! these conversions cannot fail.

use std::net::SocketAddr;

use rustls::pki_types::ServerName;

use super::{Config, HotkeyConfig, PeerConfig, RouteConfig, TransportKind};
use crate::call::hotkey::Hotkey;
use crate::routing::credentials::Credentials;
use crate::routing::{Peer, Route, Router};

impl From<&HotkeyConfig> for Hotkey {
    fn from(config: &HotkeyConfig) -> Hotkey {
        Hotkey {
            dtmf: config.dtmf.clone(),
            action: config.action,
            target: config.target.clone(),
        }
    }
}

impl From<&PeerConfig> for Peer {
    fn from(config: &PeerConfig) -> Peer {
        let mut peer = Peer::new(
            &config.name,
            config.address,
            config.platform.clone(),
            config.transport,
        )
        .with_any_port(config.any_port)
        .with_sources(config.sources.clone());
        peer.trusted = config.trusted;
        peer.diversion = config.diversion;
        peer.srtp = config.srtp;
        peer.max_calls_per_sec = config.max_calls_per_sec;
        peer.charset = config.charset;
        // Validation holds username and password together.
        peer.auth = match (&config.auth_username, &config.auth_password) {
            (Some(username), Some(password)) => Some(Credentials {
                username: username.clone(),
                password: password.clone(),
                algorithms: config.auth_algorithms.clone(),
            }),
            _ => None,
        };
        peer
    }
}

impl From<&RouteConfig> for Route {
    fn from(config: &RouteConfig) -> Route {
        Route {
            number: config.number.pattern().clone(),
            peers: config.peers.clone(),
        }
    }
}

impl From<&Config> for Router {
    /// The `[[peer]]`s and `[[route]]`s, in file order.
    fn from(config: &Config) -> Router {
        Router::new(
            config.peers.iter().map(Peer::from).collect(),
            config.routes.iter().map(Route::from).collect(),
        )
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
