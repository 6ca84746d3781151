//! The config tree converted into the typed values the parts take, so that the parts never
//! read the tree themselves.
//!
//! Each value validation parses (patterns, networks, codecs, TLS server names) is parsed here, by
//! the same function validation calls: [`Config::validate`] turns the error into the file/key/
//! reason one, and a tree that skipped validation gets [`ConfigError::Unvalidated`] at start
//! instead of a value silently dropped.

use std::net::SocketAddr;
use std::path::Path;

use rustls::pki_types::ServerName;

use super::{Config, ConfigError, HotkeyConfig, PeerConfig, TransportKind};
use crate::call::hotkey::Hotkey;
use crate::media::codec::Codec;
use crate::routing::{Cidr, NumberPattern};

impl From<&HotkeyConfig> for Hotkey {
    fn from(config: &HotkeyConfig) -> Hotkey {
        Hotkey {
            dtmf: config.dtmf.clone(),
            action: config.action,
            target: config.target.clone(),
        }
    }
}

/// The error for a value validation would have refused.
fn rejected(key: String, reason: String) -> ConfigError {
    ConfigError::Unvalidated { key, reason }
}

impl ConfigError {
    /// A conversion's error as validation reports it: naming `file`.
    pub(super) fn in_file(self, file: &Path) -> ConfigError {
        match self {
            ConfigError::Unvalidated { key, reason } => ConfigError::Invalid {
                file: file.to_path_buf(),
                key,
                reason,
            },
            other => other,
        }
    }
}

impl Config {
    /// `screening.blocklist`, as number patterns.
    ///
    /// # Errors
    /// [`ConfigError::Unvalidated`] for an entry that is no pattern.
    pub fn screening_patterns(&self) -> Result<Vec<NumberPattern>, ConfigError> {
        self.screening
            .blocklist
            .iter()
            .enumerate()
            .map(|(index, number)| {
                NumberPattern::parse(number)
                    .map_err(|reason| rejected(format!("screening.blocklist[{index}]"), reason))
            })
            .collect()
    }

    /// `sip.allow`, the networks the guard lets through, as CIDRs.
    ///
    /// # Errors
    /// [`ConfigError::Unvalidated`] for an entry that is no CIDR.
    pub fn guard_networks(&self) -> Result<Vec<Cidr>, ConfigError> {
        self.sip
            .allow
            .iter()
            .enumerate()
            .map(|(index, network)| {
                Cidr::parse(network)
                    .map_err(|error| rejected(format!("sip.allow[{index}]"), error.to_string()))
            })
            .collect()
    }

    /// `media.codecs`, in the configured order.
    ///
    /// # Errors
    /// [`ConfigError::Unvalidated`] for a codec the gateway does not relay.
    pub fn codecs(&self) -> Result<Vec<Codec>, ConfigError> {
        self.media
            .codecs
            .iter()
            .enumerate()
            .map(|(index, codec)| {
                Codec::from_name(codec).ok_or_else(|| {
                    rejected(
                        format!("media.codecs[{index}]"),
                        format!("unknown codec {codec:?}; supported: PCMA, PCMU"),
                    )
                })
            })
            .collect()
    }

    /// The `transport = "tls"` peers: address and the name their certificate must carry.
    ///
    /// # Errors
    /// [`ConfigError::Unvalidated`] for a `tls_name` that is no server name.
    pub fn tls_peer_names(&self) -> Result<Vec<(SocketAddr, ServerName<'static>)>, ConfigError> {
        self.peers
            .iter()
            .enumerate()
            .filter(|(_, peer)| peer.transport == TransportKind::Tls)
            .map(|(index, peer)| Ok((peer.address, peer_server_name(index, peer)?)))
            .collect()
    }
}

/// The name peer `index`'s certificate must carry: its `tls_name`, else its IP address.
pub(super) fn peer_server_name(
    index: usize,
    peer: &PeerConfig,
) -> Result<ServerName<'static>, ConfigError> {
    crate::sip::tls::server_name(peer.tls_name.as_deref(), peer.address)
        .map_err(|reason| rejected(format!("peer[{index}].tls_name"), reason))
}
