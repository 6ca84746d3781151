//! Reading the file, parsing the tree and the cross-field checks serde cannot express, each
//! failure naming the file, the key and the reason.

use super::*;

/// The most `[[interface]]`s (each a network the host is on; ids are one byte).
const MAX_INTERFACES: usize = 64;

/// The longest `[[peer]] probe_secs`.
const MAX_PROBE_SECS: u32 = 3600;

/// The bounds of `[[peer]] register_expires_secs`: from 2 s (tests, registrars that want short
/// bindings) to a day.
const REGISTER_EXPIRES_SECS: std::ops::RangeInclusive<u32> = 2..=86_400;

/// Builds the [`ConfigError::Invalid`] for a key and a reason, the file already named.
type Invalid<'a> = &'a dyn Fn(String, String) -> ConfigError;

mod recording;
mod routes;

impl Config {
    /// Reads, parses and validates `path`.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file, the key and the reason.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses and validates `text`; `file` is only used in error messages.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the file, the key and the reason.
    pub fn parse(file: &Path, text: &str) -> Result<Config, ConfigError> {
        let deserializer = toml::Deserializer::new(text);
        let config: Config = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            ConfigError::Invalid {
                file: file.to_path_buf(),
                key: if key == "." {
                    "(top level)".into()
                } else {
                    key
                },
                reason: inner.message().trim().to_string(),
            }
        })?;
        config.validate(file)?;
        Ok(config)
    }

    /// Cross-field checks serde cannot express.
    fn validate(&self, file: &Path) -> Result<(), ConfigError> {
        let invalid = |key: String, reason: String| ConfigError::Invalid {
            file: file.to_path_buf(),
            key,
            reason,
        };
        self.check_screening(&invalid)?;
        self.check_peer_credentials(&invalid)?;
        self.check_tls(&invalid)?;
        self.check_session_timers(&invalid)?;
        self.check_store(&invalid)?;
        self.check_api(&invalid)?;
        self.check_sip_tcp(&invalid)?;
        self.check_platforms(&invalid)?;
        self.check_conference(&invalid)?;
        self.check_media(&invalid)?;
        self.check_sip_limits(&invalid)?;
        let names = self.check_peer_names(&invalid)?;
        self.check_interfaces(&invalid)?;
        self.check_routes(&invalid, &names)?;
        self.check_hotkeys(&invalid)?;
        self.check_recording(&invalid, &names)?;
        self.check_announcements(&invalid)?;
        if !(1..=3600).contains(&self.stats.service_level_secs) {
            return Err(invalid(
                "stats.service_level_secs".into(),
                "must be 1 to 3600".into(),
            ));
        }
        if let Some(hep) = &self.hep {
            if hep.address.port() == 0 || hep.address.ip().is_unspecified() {
                return Err(invalid(
                    "hep.address".into(),
                    "must be the capture server's concrete IP:port".into(),
                ));
            }
        }
        Ok(())
    }

    /// Checks the blocked status.
    fn check_screening(&self, invalid: Invalid) -> Result<(), ConfigError> {
        if !(400..700).contains(&self.screening.blocked_status) {
            return Err(invalid(
                "screening.blocked_status".into(),
                format!(
                    "{} is no final failure status (400-699)",
                    self.screening.blocked_status
                ),
            ));
        }
        Ok(())
    }

    /// Checks each peer's digest credentials and probe interval.
    fn check_peer_credentials(&self, invalid: Invalid) -> Result<(), ConfigError> {
        for (index, peer) in self.peers.iter().enumerate() {
            if peer.auth_username.is_some() != peer.auth_password.is_some() {
                return Err(invalid(
                    format!("peer[{index}].auth_password"),
                    "auth_username and auth_password go together: give both or neither".into(),
                ));
            }
            if peer.outbound_username.is_some() != peer.outbound_password.is_some() {
                return Err(invalid(
                    format!("peer[{index}].outbound_password"),
                    "outbound_username and outbound_password go together: give both or neither"
                        .into(),
                ));
            }
            if peer.auth_password.as_ref().is_some_and(|p| p.len() < 8) {
                return Err(invalid(
                    format!("peer[{index}].auth_password"),
                    "must be at least 8 characters".into(),
                ));
            }
            if peer.max_calls == Some(0) {
                return Err(invalid(
                    format!("peer[{index}].max_calls"),
                    "must be at least 1 (leave it out for no limit)".into(),
                ));
            }
            if peer.probe_secs > MAX_PROBE_SECS {
                return Err(invalid(
                    format!("peer[{index}].probe_secs"),
                    format!(
                        "{} is more than {MAX_PROBE_SECS} (an hour): a peer probed that rarely is not watched (0 turns probing off)",
                        peer.probe_secs
                    ),
                ));
            }
            if peer.register && peer.outbound_username.is_none() {
                return Err(invalid(
                    format!("peer[{index}].register"),
                    "register = true needs outbound_username and outbound_password: the registrar challenges the REGISTER".into(),
                ));
            }
            if !REGISTER_EXPIRES_SECS.contains(&peer.register_expires_secs) {
                return Err(invalid(
                    format!("peer[{index}].register_expires_secs"),
                    format!(
                        "{} is out of range: {} to {} seconds",
                        peer.register_expires_secs,
                        REGISTER_EXPIRES_SECS.start(),
                        REGISTER_EXPIRES_SECS.end()
                    ),
                ));
            }
            if peer.register_domain.as_ref().is_some_and(|d| {
                d.trim().is_empty() || d.contains(|c: char| c.is_whitespace() || c == '@')
            }) {
                return Err(invalid(
                    format!("peer[{index}].register_domain"),
                    "must be a host name or IP address".into(),
                ));
            }
            if peer.auth_algorithms.is_empty() {
                return Err(invalid(
                    format!("peer[{index}].auth_algorithms"),
                    "must name at least one algorithm".into(),
                ));
            }
        }
        Ok(())
    }

    /// Checks the TLS certificate, listener and CAs.
    fn check_tls(&self, invalid: Invalid) -> Result<(), ConfigError> {
        if self.sip.tls_cert.is_some() != self.sip.tls_key.is_some() {
            return Err(invalid(
                "sip.tls_key".into(),
                "tls_cert and tls_key go together: give both or neither".into(),
            ));
        }
        if self.sip.tls_listen.is_some() && self.sip.tls_cert.is_none() {
            return Err(invalid(
                "sip.tls_cert".into(),
                "tls_listen needs the gateway's certificate (tls_cert and tls_key)".into(),
            ));
        }
        let tls_peer = self
            .peers
            .iter()
            .position(|p| p.transport == TransportKind::Tls);
        // A tls peer on another interface needs that interface's `tls` (check_interfaces).
        let default_tls_peer = self.peers.iter().position(|p| {
            p.transport == TransportKind::Tls
                && p.interface.as_deref().is_none_or(|name| name == "default")
        });
        if let (Some(index), None) = (default_tls_peer, self.sip.tls_listen) {
            // Its requests in the dialog (a BYE) may come on a connection of its own, to the
            // port our Contact names: that must speak TLS.
            return Err(invalid(
                format!("peer[{index}].transport"),
                "a tls peer needs sip.tls_listen (and tls_cert, tls_key): its requests come back over TLS".into(),
            ));
        }
        if (self.sip.tls_listen.is_some() || tls_peer.is_some()) && self.sip.tls_ca.is_none() {
            let key = match tls_peer {
                Some(index) if self.sip.tls_listen.is_none() => format!("peer[{index}].transport"),
                _ => "sip.tls_ca".into(),
            };
            return Err(invalid(
                key,
                "TLS needs sip.tls_ca, the CAs peers' certificates must chain to".into(),
            ));
        }
        Ok(())
    }

    /// Checks the RFC 4028 session timers.
    fn check_session_timers(&self, invalid: Invalid) -> Result<(), ConfigError> {
        if self.sip.min_se_secs < 90 {
            return Err(invalid(
                "sip.min_se_secs".into(),
                format!("{} is below RFC 4028's floor of 90 s", self.sip.min_se_secs),
            ));
        }
        if self.sip.session_expires_secs != 0
            && self.sip.session_expires_secs < self.sip.min_se_secs
        {
            return Err(invalid(
                "sip.session_expires_secs".into(),
                format!(
                    "{} is below sip.min_se_secs ({}); 0 turns session timers off",
                    self.sip.session_expires_secs, self.sip.min_se_secs
                ),
            ));
        }
        Ok(())
    }

    /// Checks the store.
    fn check_store(&self, invalid: Invalid) -> Result<(), ConfigError> {
        match (&self.store.path, &self.store.url) {
            (None, None) => {
                return Err(invalid(
                    "store.path".into(),
                    "missing: give path (the embedded SQLite file) or url (a PostgreSQL database several nodes share)".into(),
                ))
            }
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "store.url".into(),
                    "path and url are one or the other: the records live in one store".into(),
                ))
            }
            _ => {}
        }
        match (&self.store.url, &self.cluster) {
            (Some(_), None) => {
                return Err(invalid(
                    "cluster.node".into(),
                    "a store shared by url needs this node's name ([cluster] node), unique among the nodes".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "cluster".into(),
                    "[cluster] needs store.url: the nodes of a cluster share a PostgreSQL store".into(),
                ))
            }
            _ => {}
        }
        if let Some(cluster) = &self.cluster {
            if cluster.node.is_empty()
                || cluster.node.len() > 64
                || !cluster
                    .node
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(invalid(
                    "cluster.node".into(),
                    format!(
                        "{:?}: 1 to 64 letters, digits, '-', '_' or '.'",
                        cluster.node
                    ),
                ));
            }
            if !(3..=300).contains(&cluster.lease_secs) {
                return Err(invalid(
                    "cluster.lease_secs".into(),
                    format!("{} is outside 3-300", cluster.lease_secs),
                ));
            }
        }
        if self.store.url.is_none() && self.store.ca_file.is_some() {
            return Err(invalid(
                "store.ca_file".into(),
                "is the CA of a shared database (store.url): the embedded file needs none".into(),
            ));
        }
        if self.store.ca_file.is_none() && self.store.url.as_ref().is_some_and(|u| u.requires_tls())
        {
            return Err(invalid(
                "store.ca_file".into(),
                "the url asks for TLS (sslmode=require): give the CAs (PEM) the database's certificate must chain to".into(),
            ));
        }
        if self.store.url.is_some() && self.store.max_size_mb.is_some() {
            return Err(invalid(
                "store.max_size_mb".into(),
                "caps the embedded file only: a shared database's size is the database's".into(),
            ));
        }
        if self.store.max_size_mb == Some(0) {
            return Err(invalid(
                "store.max_size_mb".into(),
                "must be at least 1 (leave it out for no cap)".into(),
            ));
        }
        Ok(())
    }

    /// Checks the API.
    fn check_api(&self, invalid: Invalid) -> Result<(), ConfigError> {
        if self.api.tls_cert.is_some() != self.api.tls_key.is_some() {
            return Err(invalid(
                "api.tls_key".into(),
                "tls_cert and tls_key go together: give both or neither".into(),
            ));
        }
        // A short secret opens the page to a guess.
        if let Some(token) = &self.status.token {
            if token.len() < 16 || token.chars().any(|c| !c.is_ascii_graphic()) {
                return Err(invalid(
                    "status.token".into(),
                    "at least 16 printable characters, no spaces".into(),
                ));
            }
        }
        Ok(())
    }

    /// Checks the SIP TCP connection limits.
    fn check_sip_tcp(&self, invalid: Invalid) -> Result<(), ConfigError> {
        for (key, value) in [
            (
                "sip.tcp_request_timeout_secs",
                self.sip.tcp_request_timeout_secs,
            ),
            (
                "sip.max_tcp_connections_per_source",
                self.sip.max_tcp_connections_per_source as u64,
            ),
        ] {
            if value == 0 {
                return Err(invalid(
                    key.into(),
                    "must be at least 1 (0 would close every inbound connection)".into(),
                ));
            }
        }
        Ok(())
    }

    /// Checks the platforms and their tokens.
    fn check_platforms(&self, invalid: Invalid) -> Result<(), ConfigError> {
        let reserved = self
            .platforms
            .iter()
            .fold(0usize, |sum, p| sum.saturating_add(p.reserved_calls));
        if reserved > 0 && reserved >= self.sip.max_calls {
            return Err(invalid(
                "platform.reserved_calls".into(),
                format!(
                    "the platforms reserve {reserved} calls of sip.max_calls = {}: leave some for the rest",
                    self.sip.max_calls
                ),
            ));
        }
        // Two port pairs a reserved call, kept in every pool.
        let pairs = |[low, high]: [u16; 2]| usize::from(high.saturating_sub(low)) / 2;
        let pools = std::iter::once(("media.ports".to_string(), self.media.ports)).chain(
            self.interfaces
                .iter()
                .map(|i| (format!("interface {:?}", i.name), i.ports)),
        );
        for (pool, range) in pools {
            if reserved > 0 && reserved.saturating_mul(2) >= pairs(range) {
                return Err(invalid(
                    "platform.reserved_calls".into(),
                    format!(
                        "{reserved} reserved calls keep {} media port pairs, and {pool} has {}: leave some for the rest",
                        reserved.saturating_mul(2),
                        pairs(range)
                    ),
                ));
            }
        }
        for (index, platform) in self.platforms.iter().enumerate() {
            if platform.name.is_empty() {
                return Err(invalid(
                    format!("platform[{index}].name"),
                    "must not be empty".into(),
                ));
            }
            if platform.token.len() < 16 {
                return Err(invalid(
                    format!("platform[{index}].token"),
                    "must be at least 16 characters: it is the platform's only credential".into(),
                ));
            }
            if self.platforms[..index]
                .iter()
                .any(|p| p.token == platform.token)
            {
                return Err(invalid(
                    format!("platform[{index}].token"),
                    "is another platform's token too: each platform needs its own".into(),
                ));
            }
            if self.platforms[..index]
                .iter()
                .any(|p| p.name == platform.name)
            {
                return Err(invalid(
                    format!("platform[{index}].name"),
                    format!("platform {:?} is configured twice", platform.name),
                ));
            }
        }
        Ok(())
    }

    /// Checks the conference size.
    fn check_conference(&self, invalid: Invalid) -> Result<(), ConfigError> {
        if !(3..=crate::media::MAX_PARTIES).contains(&self.sip.conference_max_parties) {
            return Err(invalid(
                "sip.conference_max_parties".into(),
                format!(
                    "{} is out of range: a conference has 3 to {} parties",
                    self.sip.conference_max_parties,
                    crate::media::MAX_PARTIES
                ),
            ));
        }
        Ok(())
    }

    /// Checks the media ports, address, codecs, telephone-event and ptime.
    fn check_media(&self, invalid: Invalid) -> Result<(), ConfigError> {
        let [low, high] = self.media.ports;
        if low > high {
            return Err(invalid(
                "media.ports".into(),
                format!("first port {low} is above last port {high}"),
            ));
        }
        if u32::from(high) - u32::from(low) < 3 {
            return Err(invalid(
                "media.ports".into(),
                "range must hold at least two RTP/RTCP pairs".into(),
            ));
        }
        if self.media.address.is_unspecified() {
            return Err(invalid(
                "media.address".into(),
                "must be a concrete address: it is advertised in SDP c= lines".into(),
            ));
        }
        if self.media.codecs.is_empty() {
            return Err(invalid(
                "media.codecs".into(),
                "at least one codec is needed".into(),
            ));
        }
        if !(96..=127).contains(&self.media.telephone_event) {
            return Err(invalid(
                "media.telephone_event".into(),
                "must be a dynamic payload type (96-127)".into(),
            ));
        }
        if !(10..=120).contains(&self.media.ptime) || self.media.ptime % 10 != 0 {
            return Err(invalid(
                "media.ptime".into(),
                "must be 10, 20, ... 120 ms".into(),
            ));
        }
        Ok(())
    }

    /// Checks the SIP timers T1/T2 and the message size.
    fn check_sip_limits(&self, invalid: Invalid) -> Result<(), ConfigError> {
        if self.sip.t1_ms == 0 || self.sip.t2_ms < self.sip.t1_ms {
            return Err(invalid(
                "sip.t2_ms".into(),
                "T1 must be positive and T2 at least T1".into(),
            ));
        }
        if self.sip.max_message_size < 1024 {
            return Err(invalid(
                "sip.max_message_size".into(),
                "must be at least 1024 bytes".into(),
            ));
        }
        Ok(())
    }

    /// Each peer's name (present, unique) and address; returns the names, for the routes.
    fn check_peer_names(&self, invalid: Invalid) -> Result<HashSet<&str>, ConfigError> {
        let mut names = HashSet::new();
        for (index, peer) in self.peers.iter().enumerate() {
            if peer.name.trim().is_empty() {
                return Err(invalid(
                    format!("peer[{index}].name"),
                    "must not be empty".into(),
                ));
            }
            if !names.insert(peer.name.as_str()) {
                return Err(invalid(
                    format!("peer[{index}].name"),
                    format!("duplicate peer name {:?}", peer.name),
                ));
            }
            if peer.address.port() == 0 || peer.address.ip().is_unspecified() {
                return Err(invalid(
                    format!("peer[{index}].address"),
                    "must be a concrete IP:port".into(),
                ));
            }
        }
        Ok(names)
    }

    /// Each `[[interface]]`: a unique name, addresses of its own (SIP, TLS, media ports that
    /// no other interface binds), TLS only with the gateway's certificate; each peer's
    /// `interface` one that exists, and a tls peer's one that accepts TLS.
    fn check_interfaces(&self, invalid: Invalid) -> Result<(), ConfigError> {
        // The default interface first, under the keys that configure it.
        let mut sips = vec![("sip.listen".to_string(), self.sip.listen)];
        sips.extend(
            self.sip
                .tls_listen
                .map(|a| ("sip.tls_listen".to_string(), a)),
        );
        let mut media = vec![(
            "media.ports".to_string(),
            self.media.address,
            self.media.ports,
        )];
        if self.interfaces.len() > MAX_INTERFACES {
            return Err(invalid(
                format!("interface[{MAX_INTERFACES}]"),
                format!("at most {MAX_INTERFACES} interfaces beside the default one"),
            ));
        }
        if !self.interfaces.is_empty() {
            // A wildcard default socket would take every network's traffic as its own.
            for (key, address) in std::iter::once(("sip.listen", Some(self.sip.listen)))
                .chain(std::iter::once(("sip.tls_listen", self.sip.tls_listen)))
            {
                if address.is_some_and(|a| a.ip().is_unspecified()) {
                    return Err(invalid(
                        key.into(),
                        "must be the default interface's own address when [[interface]]s are configured (a wildcard receives every network's traffic)".into(),
                    ));
                }
            }
        }
        let mut names: HashSet<&str> = HashSet::new();
        for (index, interface) in self.interfaces.iter().enumerate() {
            let key = |field: &str| format!("interface[{index}].{field}");
            let name = interface.name.trim();
            if name.is_empty() || name != interface.name {
                return Err(invalid(
                    key("name"),
                    "must be a name without surrounding spaces".into(),
                ));
            }
            if name == "default" || !names.insert(name) {
                return Err(invalid(
                    key("name"),
                    format!("duplicate interface name {name:?} (\"default\" is [sip]/[media]'s)"),
                ));
            }
            if interface.sip.ip().is_unspecified() {
                return Err(invalid(
                    key("sip"),
                    "must be a concrete address: an interface is the one network it is bound to"
                        .into(),
                ));
            }
            if interface.media.is_unspecified() {
                return Err(invalid(
                    key("media"),
                    "must be a concrete address: it is advertised in SDP c= lines".into(),
                ));
            }
            if interface.tls.is_some_and(|a| a.ip().is_unspecified()) {
                return Err(invalid(
                    key("tls"),
                    "must be a concrete address: an interface is the one network it is bound to"
                        .into(),
                ));
            }
            if let Some(advertised) = interface.advertise {
                if advertised.is_unspecified()
                    || advertised.is_multicast()
                    || advertised.is_ipv4() != interface.sip.is_ipv4()
                {
                    return Err(invalid(
                        key("advertise"),
                        format!(
                            "{advertised} cannot be told to peers: a unicast address of the same family as sip"
                        ),
                    ));
                }
            }
            if interface.tls.is_some() && (self.sip.tls_cert.is_none() || self.sip.tls_ca.is_none())
            {
                return Err(invalid(
                    key("tls"),
                    "TLS needs sip.tls_cert, sip.tls_key and sip.tls_ca".into(),
                ));
            }
            for (field, address) in
                std::iter::once(("sip", interface.sip)).chain(interface.tls.map(|a| ("tls", a)))
            {
                if let Some((other, _)) = sips.iter().find(|(_, a)| {
                    a.port() == address.port()
                        && a.port() != 0
                        && (a.ip() == address.ip() || a.ip().is_unspecified())
                }) {
                    return Err(invalid(
                        key(field),
                        format!("{address} is bound by {other} already"),
                    ));
                }
                sips.push((key(field), address));
            }
            let [low, high] = interface.ports;
            if low == 0 || low > high || u32::from(high) - u32::from(low) < 3 {
                return Err(invalid(
                    key("ports"),
                    format!("[{low}, {high}] must be a range of at least two RTP/RTCP pairs"),
                ));
            }
            if let Some((other, _, _)) = media.iter().find(|(_, ip, [l, h])| {
                (*ip == interface.media || ip.is_unspecified()) && low <= *h && *l <= high
            }) {
                return Err(invalid(
                    key("ports"),
                    format!("[{low}, {high}] on {} overlaps {other}", interface.media),
                ));
            }
            media.push((key("ports"), interface.media, interface.ports));
        }
        for (index, peer) in self.peers.iter().enumerate() {
            let Some(name) = &peer.interface else {
                continue;
            };
            if name == "default" {
                continue;
            }
            let Some(interface) = self.interfaces.iter().find(|i| &i.name == name) else {
                return Err(invalid(
                    format!("peer[{index}].interface"),
                    format!("no [[interface]] is named {name:?}"),
                ));
            };
            if peer.transport == TransportKind::Tls && interface.tls.is_none() {
                return Err(invalid(
                    format!("peer[{index}].transport"),
                    format!(
                        "a tls peer needs its interface's tls address (interface {name:?} has none): its requests come back over TLS"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The first address the gateway is to bind (SIP, TLS, media; each interface's) that is not
    /// an address of this host, with its key: `--check` and the start refuse it (a media
    /// address elsewhere would otherwise fail every call with 503 only when it comes).
    pub fn address_not_on_host(&self) -> Option<(String, IpAddr)> {
        let mut addresses = vec![
            ("sip.listen".to_string(), self.sip.listen.ip()),
            ("media.address".to_string(), self.media.address),
        ];
        addresses.extend(
            self.sip
                .tls_listen
                .map(|a| ("sip.tls_listen".to_string(), a.ip())),
        );
        for (index, interface) in self.interfaces.iter().enumerate() {
            addresses.push((format!("interface[{index}].sip"), interface.sip.ip()));
            addresses.push((format!("interface[{index}].media"), interface.media));
            addresses.extend(
                interface
                    .tls
                    .map(|a| (format!("interface[{index}].tls"), a.ip())),
            );
        }
        addresses.into_iter().find(|(_, ip)| {
            !ip.is_unspecified()
                && std::net::UdpSocket::bind((*ip, 0))
                    .is_err_and(|e| e.kind() == std::io::ErrorKind::AddrNotAvailable)
        })
    }

    /// The interface a peer is reached on, by name ("default" for `[sip]`/`[media]`).
    fn peer_interface(&self, name: &str) -> &str {
        self.peers
            .iter()
            .find(|p| p.name == name)
            .and_then(|p| p.interface.as_deref())
            .unwrap_or("default")
    }

    /// Checks the hotkeys.
    fn check_hotkeys(&self, invalid: Invalid) -> Result<(), ConfigError> {
        for (index, hotkey) in self.hotkeys.iter().enumerate() {
            if hotkey.dtmf.is_empty()
                || !hotkey
                    .dtmf
                    .chars()
                    .all(|c| c.is_ascii_digit() || matches!(c, '*' | '#' | 'A'..='D'))
            {
                return Err(invalid(
                    format!("hotkey[{index}].dtmf"),
                    "must be DTMF digits (0-9, *, #, A-D)".into(),
                ));
            }
            if hotkey.target.is_empty() {
                return Err(invalid(
                    format!("hotkey[{index}].target"),
                    "must not be empty".into(),
                ));
            }
        }
        Ok(())
    }
}
