//! hotline-gateway: a SIP/RTP back-to-back user agent that links the 12345 government-service
//! hotline and the 110 police desk.
//!
//! Data flows one way: socket -> [`sip::transport`] -> [`sip::endpoint`] (driving the sans-IO
//! transaction layer, [`sip::transaction::layer`]) ->
//! [`call`] (the B2BUA call model, the only place that decides) -> [`routing`] / [`media`] /
//! [`store`] -> transaction -> transport -> socket. Folders import one way too: `media`,
//! `store` and `routing` import no other room, `sip` only `media` and `routing`, `call` those
//! and `store`; `gateway`, `workorder` and `config` are the edges, and no room imports
//! `config`: it converts its tree into the parts' own types, which [`start`] assembles.
//!
//! | module | holds |
//! |---|---|
//! | [`config`] | the TOML tree, parsed once (into the parts' types where they parse), validated with file/key/reason errors, converted into what the parts' constructors take |
//! | [`sip`] | message grammar, SDP, sans-IO transactions and transaction layer (and the events/keys the call model speaks), targets, UDP/TCP/TLS transport, the endpoint driver; digest auth as server (`auth`) and client (`digest_client`) |
//! | [`call`] | the call state machine (sans-IO) split by state: legs, forks (a peer's challenge answered), transfer, guests; hotkeys, screening, identity; a call's SIPREC recording session (sans-IO) and its RFC 7865 metadata |
//! | [`gateway`] | the I/O around the call model: the call's driver task, admission, the work-order glue, the peer prober (OPTIONS), the registrar client (REGISTER) |
//! | [`media`] | codecs, G.711, RTP rewriting, SRTP, the mixer (pure); port allocation; the relay: a sans-IO per-call state and the worker threads that own the sockets; recording (the relay's tap, the writer thread, the files) |
//! | [`calendar`] | UTC dates from Unix days and back (pure, used by every room that names a day) |
//! | [`routing`] | number -> peers (those up), source address -> peer; a peer's vocabulary (transport, SRTP policy, credentials, charset) and health (sans-IO probe state, liveness flag) |
//! | [`store`] | SQLite call records, linkage and conference records, the work-order outbox |
//! | [`workorder`] | the gRPC work-order link: events to the platforms, their commands back |
//! | [`metrics`], [`http`], [`health`] | Prometheus counters and gauges; the HTTP API on axum: /healthz (parts' round trips, peers down), /metrics, /recordings, the live status page and its board |
//! | [`cli`] | what the command line prints (the `calls` table) |
//! | [`shutdown`] | SIGINT/SIGTERM to one token, and the order the gateway stops in |
//! | [`limits`] | the file-descriptor budget and `RLIMIT_NOFILE` |

pub mod calendar;
pub mod call;
pub mod cdr;
pub mod cli;
pub mod config;
pub mod faults;
pub mod gateway;
pub mod health;
pub mod http;
pub mod ids;
pub mod limits;
pub mod media;
pub mod metrics;
pub mod routing;
pub mod shutdown;
pub mod sip;
pub mod stats;
pub mod store;
pub mod workorder;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use call::CallSettings;
use config::Config;
use gateway::admission::CallManager;
use gateway::driver::CallServices;
use media::ports::PortPools;
use metrics::Metrics;
use routing::Router;
use sip::endpoint::Endpoint;
use sip::transport::{Transport, TransportConfig};
use store::Store;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Transport(#[from] sip::transport::TransportError),
    #[error("store: {0}")]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Recording(#[from] media::recording::RecordingError),
    #[error("cdr.path {}: {source}", path.display())]
    Cdr {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the media workers: {0}")]
    Media(std::io::Error),
    #[error("the system's random number generator failed")]
    Random,
    #[error("SIP over TLS: {0}")]
    SipTls(#[from] sip::tls::TlsError),
    #[error("cannot bind the HTTP endpoint on {address}: {source}")]
    Http {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot bind the work-order gRPC endpoint on {address}: {source}")]
    Grpc {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot read the gRPC endpoint's TLS file {path}: {source}")]
    Tls {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{key}: {address} is not an address of this host")]
    NotOnHost { key: String, address: IpAddr },
}

/// A running gateway: its addresses, for tests and logs.
pub struct Running {
    pub sip: SocketAddr,
    /// Where SIP over TLS is accepted (`sip.tls_listen`, its port resolved).
    pub sip_tls: Option<SocketAddr>,
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    pub metrics: Arc<Metrics>,
    finished: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Waits until the gateway has stopped (after `shutdown` fired and calls were ended).
    pub async fn wait(self) {
        let _ = self.finished.await;
    }
}

/// A fresh key for signing digest nonces (from the system's CSPRNG).
fn nonce_key() -> Result<[u8; 32], StartError> {
    use ring::rand::SecureRandom as _;
    let mut key = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| StartError::Random)?;
    Ok(key)
}

/// Starts every part of the gateway; returns once it is listening. Cancel `shutdown` to stop
/// it: calls get BYE (or CANCEL/503), the store is flushed, then [`Running::wait`] returns.
///
/// # Errors
/// [`StartError`] when a socket cannot be bound or the store cannot be opened.
pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Running, StartError> {
    if let Some((key, address)) = config.address_not_on_host() {
        return Err(StartError::NotOnHost { key, address });
    }
    let router = Arc::new(Router::from(&config));
    warn_clear_srtp(&router);
    let (max_calls, max_tcp_connections) = allowances(&config);
    let metrics = Arc::new(Metrics::new());
    metrics.set_service_level_secs(config.stats.service_level_secs);
    // One gateway per store, claimed before anything is touched; then every socket is bound, so
    // an instance started by mistake fails here rather than closing the live one's calls.
    // A shared store (`[store] url`) is claimed by the node's lease as it opens instead.
    let store_location = config.store.location();
    let store_lock = match &store_location {
        store::StoreLocation::File(path) => Some(store::StoreLock::acquire(path)?),
        store::StoreLocation::Database(_) => None,
    };
    let (inbound_sender, inbound) = mpsc::channel(8192);
    let transport_stop = CancellationToken::new();
    let transport = bind_transport(
        &config,
        max_tcp_connections,
        inbound_sender,
        &router,
        &metrics,
        &transport_stop,
    )
    .await?;
    // A start that fails from here on closes the sockets again.
    let unbind = transport_stop.clone().drop_guard();
    let (http_listener, grpc_listener) = bind_api(&config).await?;
    let (store, blocked) = open_store(&config, &metrics).await?;
    let recorder = match &config.recording {
        Some(recording) => Some(media::recording::Recorder::start(
            recording.settings(),
            Arc::clone(&metrics),
        )?),
        None => None,
    };
    let cdr = match &config.cdr {
        Some(cdr) => Some(
            gateway::cdr::CdrFile::start(cdr.path.clone(), Arc::clone(&metrics)).map_err(
                |source| StartError::Cdr {
                    path: cdr.path.clone(),
                    source,
                },
            )?,
        ),
        None => None,
    };
    let events = workorder::hub::EventHub::new(
        store.clone(),
        config.platform_names(),
        ids::IdGenerator::from_entropy().map_err(|_| StartError::Random)?,
    );
    let registry = Arc::new(workorder::registry::CallRegistry::default());
    let ports = config.port_pools(&metrics);
    let local_sip = SocketAddr::new(config.sip.advertised_ip(), transport.local_address().port());
    let transport_tls = transport.tls_local_address();
    let local = local_addresses(&config, &transport);
    let directory = Arc::new(call::directory::Directory::default());
    let settings = Arc::new(config.call_settings(config::CallContext {
        local: local.clone(),
        router: Arc::clone(&router),
        directory: Arc::clone(&directory),
    }));
    let reserves: Vec<(String, usize)> = config
        .platforms
        .iter()
        .map(|p| (p.name.clone(), p.reserved_calls))
        .collect();
    let reserve = Arc::new(gateway::reserve::Reserve::new(
        &reserves,
        Arc::clone(&router),
    ));
    if reserve.calls() > 0 && reserve.calls() >= max_calls {
        // The descriptor limit held max_calls down to the reserve: only the reserved
        // platforms' calls get through.
        tracing::warn!(
            max_calls,
            reserved_calls = reserve.calls(),
            "the calls held for the reserved platforms are all the calls this process can take: raise LimitNOFILE"
        );
    }
    let (manager, media_probe, blocklist) = call_manager(
        &config,
        &router,
        settings,
        (&ports, &reserve),
        &metrics,
        (max_calls, blocked),
    )?;
    follow_blocklist(&store, &blocklist, &metrics, &shutdown);
    follow_arrivals(&store, &manager, &shutdown);
    let (endpoint, handle, commands) =
        build_endpoint(&config, transport, &manager, &metrics, local_sip, &router)?;
    // The reserved platforms' calls are never shed by overload control.
    let endpoint = if reserve.calls() > 0 {
        endpoint.with_priority(Arc::clone(&reserve) as Arc<dyn sip::overload::Priority>)
    } else {
        endpoint
    };
    let tracker = tokio_util::task::TaskTracker::new();
    let endpoint_probe = handle.clone();
    let prober = prober_services(&config, &handle, local.clone(), &metrics, &events)?;
    let siprec = siprec_settings(&config, &router, &local);
    let registrar = gateway::registrar::RegistrarServices {
        endpoint: handle.clone(),
        local,
        metrics: Arc::clone(&metrics),
        ids: ids::IdGenerator::from_entropy().map_err(|_| StartError::Random)?,
    };
    manager.attach(CallServices {
        endpoint: handle,
        store: store.clone(),
        metrics: Arc::clone(&metrics),
        shutdown: shutdown.clone(),
        tracker: tracker.clone(),
        directory,
        ports,
        events: Arc::clone(&events),
        registry: Arc::clone(&registry),
        recording: recorder
            .as_ref()
            .map(|(recorder, _)| (recorder.clone(), Arc::clone(&router))),
        siprec,
        cdr: cdr.as_ref().map(|(file, _)| file.clone()),
        reserved_port_pairs: reserve.port_pairs(),
    });
    let endpoint_stop = CancellationToken::new();
    let endpoint_task = tokio::spawn(endpoint.run(inbound, commands, endpoint_stop.clone()));
    // Tracked with the calls: a gateway that stops has written its last peer event.
    tracker.spawn(gateway::prober::run(
        Arc::clone(&router),
        prober,
        shutdown.clone(),
    ));
    // Tracked too: its un-REGISTERs go out while the endpoint still runs.
    tracker.spawn(gateway::registrar::run(
        Arc::clone(&router),
        registrar,
        shutdown.clone(),
    ));

    let health = Arc::new(health::Health {
        shutdown: shutdown.clone(),
        endpoint: endpoint_probe,
        store: store.clone(),
        media: media_probe,
        metrics: Arc::clone(&metrics),
        router: Arc::clone(&router),
    });
    let (http_address, http_stop) = serve_http(
        &config,
        http_listener,
        (&metrics, health),
        (&registry, &router),
    );
    let (grpc_address, grpc_stop, grpc_task) = serve_grpc(
        &config,
        grpc_listener,
        events,
        registry,
        (blocklist, store.clone()),
        &metrics,
    )?;
    tokio::spawn(prune_outbox(
        store.clone(),
        config.api.outbox_retention(),
        shutdown.clone(),
    ));

    unbind.disarm();
    tracing::info!(sip = %local_sip, http = %http_address, grpc = %grpc_address, store = %store_location, "gateway listening");
    let finished = tokio::spawn(
        shutdown::Stopping {
            calls: tracker,
            endpoint_stop,
            transport_stop,
            endpoint: endpoint_task,
            http_stop,
            grpc_stop,
            grpc: grpc_task,
            store,
            store_lock,
            recorder,
            cdr,
        }
        .after(shutdown),
    );
    Ok(Running {
        sip: local_sip,
        sip_tls: transport_tls,
        http: http_address,
        grpc: grpc_address,
        metrics,
        finished,
    })
}

/// Our SIP address on each interface, as its peers see it, with the ports bound there.
fn local_addresses(config: &Config, transport: &Transport) -> sip::target::LocalAddresses {
    let bound: Vec<_> = (0..=config.interfaces.len())
        .filter_map(|index| {
            let interface = sip::target::InterfaceId(u8::try_from(index).ok()?);
            Some((
                transport.local_address_of(interface)?,
                transport.tls_local_address_of(interface),
            ))
        })
        .collect();
    config.local_addresses(&bound)
}

/// `[recording] siprec`: the recording server's peer (checked to exist by `--check`), and our
/// addresses and User-Agent for its sessions.
fn siprec_settings(
    config: &Config,
    router: &Arc<Router>,
    local: &sip::target::LocalAddresses,
) -> Option<Arc<call::siprec::SiprecSettings>> {
    let name = config.recording.as_ref()?.siprec.as_ref()?;
    let peer = router.peer_by_name(name)?;
    Some(Arc::new(call::siprec::SiprecSettings {
        peer,
        local: local.clone(),
        user_agent: (!config.sip.user_agent.is_empty()).then(|| config.sip.user_agent.clone()),
    }))
}

/// What the peer prober needs: the endpoint, our SIP addresses (UDP/TCP and TLS) for its Via,
/// the metrics, and the platforms its events go to.
fn prober_services(
    config: &Config,
    endpoint: &sip::endpoint::EndpointHandle,
    local: sip::target::LocalAddresses,
    metrics: &Arc<Metrics>,
    events: &Arc<workorder::hub::EventHub>,
) -> Result<gateway::prober::ProberServices, StartError> {
    Ok(gateway::prober::ProberServices {
        endpoint: endpoint.clone(),
        local,
        metrics: Arc::clone(metrics),
        events: Arc::clone(events),
        platforms: config.platform_names(),
        ids: ids::IdGenerator::from_entropy().map_err(|_| StartError::Random)?,
    })
}

/// Warns of each peer whose SRTP keys would cross the network in clear SIP.
fn warn_clear_srtp(router: &Router) {
    // RFC 4568 §8.3: SDES keys are only as secret as the signalling that carries them.
    for peer in router.peers().iter().filter(|p| {
        p.srtp == routing::SrtpMode::Mandatory && p.transport != routing::TransportKind::Tls
    }) {
        tracing::warn!(
            peer = %peer.name,
            "srtp = \"mandatory\" without transport = \"tls\": the SRTP keys cross the network in clear SIP"
        );
    }
}

/// Raises `RLIMIT_NOFILE`; returns the calls and TCP connections the limit holds.
fn allowances(config: &Config) -> (usize, usize) {
    let limit = limits::raise();
    let budget = limits::Budget::from(config);
    let max_calls = budget.call_allowance(&limit, config.sip.max_calls);
    let max_tcp_connections = budget.tcp_allowance(&limit, max_calls);
    if let Some(reason) = limits::shortfall(&budget, &limit) {
        tracing::warn!(
            max_calls,
            max_tcp_connections,
            "{reason}; calls and TCP connections are held to what the limit holds"
        );
    }
    (max_calls, max_tcp_connections)
}

/// The SIP TLS settings (when `sip.tls_ca` is set), then the SIP sockets bound.
async fn bind_transport(
    config: &Config,
    max_tcp_connections: usize,
    inbound_sender: mpsc::Sender<sip::transport::TransportEvent>,
    router: &Arc<Router>,
    metrics: &Arc<Metrics>,
    transport_stop: &CancellationToken,
) -> Result<Transport, StartError> {
    let tls = match config.tls_files() {
        Some(files) => Some(sip::tls::settings(&files)?),
        None => None,
    };
    Ok(Transport::bind(
        TransportConfig {
            max_tcp_connections,
            ..config.transport()
        },
        tls,
        inbound_sender,
        Arc::clone(router),
        Arc::clone(metrics),
        transport_stop.clone(),
    )
    .await?)
}

/// The HTTP and the gRPC listeners, bound in that order.
async fn bind_api(
    config: &Config,
) -> Result<(tokio::net::TcpListener, tokio::net::TcpListener), StartError> {
    let http_listener = tokio::net::TcpListener::bind(config.api.http)
        .await
        .map_err(|source| StartError::Http {
            address: config.api.http,
            source,
        })?;
    let grpc_listener = tokio::net::TcpListener::bind(config.api.grpc)
        .await
        .map_err(|source| StartError::Grpc {
            address: config.api.grpc,
            source,
        })?;
    Ok((http_listener, grpc_listener))
}

/// The store opened (a shared one in a blocking task: its client blocks), what the previous run
/// left open closed; and the numbers blocked through the API.
async fn open_store(
    config: &Config,
    metrics: &Arc<Metrics>,
) -> Result<(Store, Vec<store::BlockedNumberRecord>), StartError> {
    let options = store::StoreOptions {
        metrics: Some(Arc::clone(metrics)),
        // What a killed run left open ends on the link too, for the platforms that saw it.
        recovery: Some(workorder::recovery::recovery(
            ids::IdGenerator::from_entropy().map_err(|_| StartError::Random)?,
            config.platform_names(),
        )),
        cluster: config.cluster_options(),
        ..store::StoreOptions::from(&config.store)
    };
    let location = config.store.location();
    let opened = tokio::task::spawn_blocking(move || {
        let store = Store::connect(&location, options)?;
        let blocked = location.list_blocked(store::unix_millis(std::time::SystemTime::now()))?;
        Ok::<_, store::StoreError>((store, blocked))
    })
    .await
    .map_err(|_| StartError::Store(store::StoreError::Closed))??;
    if opened.0.closed_at_start() > 0 {
        tracing::warn!(
            calls = opened.0.closed_at_start(),
            "records of calls left open by the previous run closed (gateway restart)"
        );
    }
    Ok(opened)
}

/// Applies the blocklist changes other nodes of a cluster make to this node's screening.
fn follow_blocklist(
    store: &Store,
    blocklist: &Arc<call::blocklist::Blocklist>,
    metrics: &Arc<Metrics>,
    shutdown: &CancellationToken,
) {
    let Some(mut changes) = store.blocklist_changes() else {
        return;
    };
    let (blocklist, metrics, shutdown, store) = (
        Arc::clone(blocklist),
        Arc::clone(metrics),
        shutdown.clone(),
        store.clone(),
    );
    tokio::spawn(async move {
        loop {
            let change = tokio::select! {
                change = changes.recv() => change,
                _ = shutdown.cancelled() => return,
            };
            match change {
                Ok(store::BlocklistChange::Blocked(record)) => {
                    blocklist.block(record);
                    metrics.increment(metrics::Counter::ClusterBlocklistChanges);
                }
                Ok(store::BlocklistChange::Unblocked(number)) => {
                    blocklist.unblock(&number);
                    metrics.increment(metrics::Counter::ClusterBlocklistChanges);
                }
                Ok(store::BlocklistChange::Reloaded(list)) => blocklist.replace(list),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                    // The store has the whole list: read it again.
                    tracing::warn!(
                        missed,
                        "blocklist changes of other nodes missed: reading the list again"
                    );
                    let location = store.location().clone();
                    let now = store::unix_millis(std::time::SystemTime::now());
                    if let Ok(Ok(list)) =
                        tokio::task::spawn_blocking(move || location.list_blocked(now)).await
                    {
                        blocklist.replace(list);
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
}

/// Counts the other nodes' new calls towards this node's repeat callers.
fn follow_arrivals(store: &Store, manager: &Arc<CallManager>, shutdown: &CancellationToken) {
    let Some(mut callers) = store.caller_arrivals() else {
        return;
    };
    let (manager, shutdown) = (Arc::clone(manager), shutdown.clone());
    tokio::spawn(async move {
        loop {
            let caller = tokio::select! {
                caller = callers.recv() => caller,
                _ = shutdown.cancelled() => return,
            };
            match caller {
                Ok(caller) => manager.note_call_elsewhere(&caller),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "other nodes' callers missed (repeat callers)");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
}

/// The media engine started, the screening (with the stored blocklist) and the call manager;
/// returns the manager, the engine's probe and the blocklist.
fn call_manager(
    config: &Config,
    router: &Arc<Router>,
    settings: Arc<CallSettings>,
    (ports, reserve): (&Arc<PortPools>, &Arc<gateway::reserve::Reserve>),
    metrics: &Arc<Metrics>,
    (max_calls, blocked): (usize, Vec<store::BlockedNumberRecord>),
) -> Result<
    (
        Arc<CallManager>,
        media::relay::MediaProbe,
        Arc<call::blocklist::Blocklist>,
    ),
    StartError,
> {
    let media_workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let media = media::relay::MediaEngine::start(media_workers, Arc::clone(metrics))
        .map_err(StartError::Media)?;
    let media_probe = media.probe();
    let blocklist = Arc::new(call::blocklist::Blocklist::with(blocked));
    let screening =
        call::screening::Screening::from(&config.screening).with_listed(Arc::clone(&blocklist));
    let manager = Arc::new(
        CallManager::new(
            Arc::clone(router),
            settings,
            gateway::admission::MediaResources {
                ports: Arc::clone(ports),
                engine: media,
                inactivity: config.media.inactivity_timeout(),
            },
            Arc::clone(metrics),
            ids::IdGenerator::from_entropy().map_err(|_| StartError::Random)?,
            max_calls,
        )
        .with_screening(screening)
        .with_reserve(Arc::clone(reserve)),
    );
    Ok((manager, media_probe, blocklist))
}

/// The SIP endpoint over `transport`, with its overload delay, guard, options and digest auth.
fn build_endpoint(
    config: &Config,
    transport: Transport,
    manager: &Arc<CallManager>,
    metrics: &Arc<Metrics>,
    local_sip: SocketAddr,
    router: &Arc<Router>,
) -> Result<
    (
        Endpoint,
        sip::endpoint::EndpointHandle,
        mpsc::UnboundedReceiver<sip::endpoint::Command>,
    ),
    StartError,
> {
    let (endpoint, handle, commands) = Endpoint::new(
        transport,
        sip::transaction::TimerConfig::from(&config.sip),
        Arc::clone(manager) as Arc<dyn sip::endpoint::Dispatcher>,
        Arc::clone(metrics),
        local_sip,
    );
    let guard = sip::guard::Guard::new(sip::guard::GuardConfig::from(&config.sip));
    let endpoint = endpoint
        .with_overload_delay(config.sip.overload_queue_delay())
        .with_guard(guard, Arc::clone(router))
        .with_supported(config.sip.supported())
        .with_max_transactions(config.sip.max_transactions)
        // The endpoint's clock (tokio's), which the nonces' ages are read on.
        .with_auth(
            config
                .sip
                .digest(nonce_key()?, tokio::time::Instant::now().into_std()),
        );
    Ok((endpoint, handle, commands))
}

/// Spawns the HTTP endpoint (/healthz, /metrics, /recordings, the status page); returns its
/// address and its stop switch.
fn serve_http(
    config: &Config,
    http_listener: tokio::net::TcpListener,
    (metrics, health): (&Arc<Metrics>, Arc<dyn health::HealthCheck>),
    (registry, router): (&Arc<workorder::registry::CallRegistry>, &Arc<Router>),
) -> (SocketAddr, tokio::sync::watch::Sender<bool>) {
    let http_address = http_listener.local_addr().unwrap_or(config.api.http);
    let (http_stop, http_stopped) = tokio::sync::watch::channel(false);
    let mut services = http::HttpServices::new(Arc::clone(metrics), health);
    services.recordings = config.recording.as_ref().map(|recording| {
        Arc::new(http::RecordingAccess {
            root: recording.path.clone(),
            retention_days: recording.retention_days,
            tokens: workorder::auth::Tokens::new(
                config
                    .platforms
                    .iter()
                    .map(|p| (p.name.clone(), p.token.clone())),
            ),
            throttle: workorder::auth::LoginThrottle::default(),
        })
    });
    let board = http::status::BoardSources {
        registry: Arc::clone(registry),
        router: Arc::clone(router),
        metrics: Arc::clone(metrics),
        store: config.store.location(),
        node: config
            .cluster
            .as_ref()
            .map(|c| c.node.clone())
            .unwrap_or_default(),
        within_secs: config.stats.service_level_secs,
        utc_offset_minutes: config.routing.offset_minutes(),
        recording: config.recording.is_some(),
        show_numbers: config.status.show_numbers,
    };
    let feed = http::status::board::start(board, http_stopped.clone());
    let access = http::status::StatusAccess::from(&config.status);
    services.status = Some(Arc::new(http::status::StatusPage::new(access, feed)));
    tokio::spawn(http::serve(http_listener, services, http_stopped));
    (http_address, http_stop)
}

/// Spawns the work-order gRPC endpoint (with TLS when `api.tls_cert` is set); returns its
/// address, its stop token and its task.
fn serve_grpc(
    config: &Config,
    grpc_listener: tokio::net::TcpListener,
    events: Arc<workorder::hub::EventHub>,
    registry: Arc<workorder::registry::CallRegistry>,
    (blocklist, store): (Arc<call::blocklist::Blocklist>, Store),
    metrics: &Arc<Metrics>,
) -> Result<(SocketAddr, CancellationToken, tokio::task::JoinHandle<()>), StartError> {
    let tls = match (&config.api.tls_cert, &config.api.tls_key) {
        (Some(cert), Some(key)) => {
            let read = |path: &std::path::PathBuf| {
                std::fs::read(path).map_err(|source| StartError::Tls {
                    path: path.clone(),
                    source,
                })
            };
            Some(tonic::transport::ServerTlsConfig::new().identity(
                tonic::transport::Identity::from_pem(read(cert)?, read(key)?),
            ))
        }
        _ => None,
    };
    let grpc_address = grpc_listener.local_addr().unwrap_or(config.api.grpc);
    let grpc_stop = CancellationToken::new();
    let service = workorder::service::WorkOrderService::new(
        events,
        registry,
        config.store.location(),
        config.platform_tokens(),
        Arc::clone(metrics),
        grpc_stop.clone(),
    )
    .with_blocklist(blocklist, store.clone())
    .with_peer_platforms(
        config
            .peers
            .iter()
            .filter_map(|p| Some((p.name.clone(), p.platform.clone()?)))
            .collect(),
    );
    // A cluster's nodes forward commands for the calls this node carries, and ask for its list.
    tokio::spawn(service.clone().answer_forwarded(store));
    let grpc_task = tokio::spawn(workorder::service::serve(
        service,
        grpc_listener,
        tls,
        grpc_stop.clone(),
    ));
    Ok((grpc_address, grpc_stop, grpc_task))
}

/// Deletes outbox events past their retention, hourly.
async fn prune_outbox(store: Store, retention: Duration, shutdown: CancellationToken) {
    let mut hourly = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tokio::select! {
            _ = hourly.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let cutoff = std::time::SystemTime::now()
            .checked_sub(retention)
            .map_or(0, store::unix_millis);
        if let Err(error) = store.prune_outbox(cutoff).await {
            tracing::warn!(%error, "outbox not pruned");
        }
    }
}
