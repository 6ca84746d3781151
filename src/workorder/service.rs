//! The tonic service of `hotline.workorder.v1`: each platform's `Link` stream (events from
//! the outbox, acknowledgements and commands), the unary calls, and who may do what.
//!
//! A stream's events are always read from the store: the hub only says up to which sequence
//! they are committed. So a stream that falls behind (a slow client) just reads further back,
//! holding nothing but its own bounded send buffer, and a reconnect is the same loop started
//! from the acknowledged sequence.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use prost::Message;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::hub::EventHub;
use super::registry::{CallCommand, CallRegistry, CommandError, ErrorCode};
use super::{convert, pb, CallEvent, EventKind};
use crate::call::screening::Blocklist;
use crate::metrics::{Counter, Gauge, Metrics};
use crate::store::{self, unix_millis, OutboxReader, Store};

/// Events a stream reads from the store at a time.
const PAGE: usize = 256;
/// Messages queued towards one client before its stream waits (a slow client waits alone).
const CLIENT_BUFFER: usize = 128;
/// How long a call's task may take to answer a command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a new stream may take to say Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The work-order service.
#[derive(Clone)]
pub struct WorkOrderService {
    hub: Arc<EventHub>,
    registry: Arc<CallRegistry>,
    store_path: PathBuf,
    /// Platform name -> token.
    tokens: Arc<HashMap<String, String>>,
    metrics: Arc<Metrics>,
    /// Ends every stream (the gateway is stopping).
    stop: tokio_util::sync::CancellationToken,
    /// The API's blocklist (shared with screening) and the store that keeps it.
    blocklist: Option<(Arc<Blocklist>, Store)>,
}

/// Longest reason a Block may give (the list is held in memory).
const MAX_REASON: usize = 256;

impl WorkOrderService {
    pub fn new(
        hub: Arc<EventHub>,
        registry: Arc<CallRegistry>,
        store_path: PathBuf,
        tokens: HashMap<String, String>,
        metrics: Arc<Metrics>,
        stop: tokio_util::sync::CancellationToken,
    ) -> WorkOrderService {
        WorkOrderService {
            hub,
            registry,
            store_path,
            tokens: Arc::new(tokens),
            metrics,
            stop,
            blocklist: None,
        }
    }

    /// Lets the platforms block and unblock numbers on `blocklist`, kept in `store`.
    #[must_use]
    pub fn with_blocklist(mut self, blocklist: Arc<Blocklist>, store: Store) -> WorkOrderService {
        self.blocklist = Some((blocklist, store));
        self
    }

    /// Block / Unblock: the gateway's list, not a call's.
    async fn block(
        &self,
        platform: &str,
        number: &str,
        entry: Option<(String, u32)>,
    ) -> Result<(), CommandError> {
        let valid = !number.is_empty()
            && number.len() <= 32
            && number
                .strip_prefix('+')
                .unwrap_or(number)
                .bytes()
                .all(|b| b.is_ascii_digit());
        if !valid {
            return Err(CommandError::new(
                ErrorCode::Invalid,
                format!("{number:?} is no phone number (digits, optionally a leading +)"),
            ));
        }
        let Some((blocklist, store)) = &self.blocklist else {
            return Err(CommandError::new(
                ErrorCode::NotAllowedNow,
                "this gateway keeps no blocklist",
            ));
        };
        let Some((reason, minutes)) = entry else {
            let listed = blocklist.unblock(number);
            // An entry that expired meanwhile leaves its row: it goes too.
            store.unblock_number(number).await.map_err(|e| {
                CommandError::new(ErrorCode::NotAllowedNow, format!("not stored: {e}"))
            })?;
            if !listed {
                return Err(CommandError::new(
                    ErrorCode::Invalid,
                    format!("{number} is not on the API's blocklist"),
                ));
            }
            tracing::info!(platform, number, "number taken off the blocklist");
            return Ok(());
        };
        if reason.len() > MAX_REASON {
            return Err(CommandError::new(
                ErrorCode::Invalid,
                format!("the reason is longer than {MAX_REASON} bytes"),
            ));
        }
        let now = unix_millis(SystemTime::now());
        let record = store::BlockedNumberRecord {
            number: number.to_string(),
            platform: platform.to_string(),
            reason,
            blocked_at: now,
            expires_at: (minutes > 0).then(|| now + i64::from(minutes) * 60_000),
        };
        if !blocklist.block(record.clone()) {
            return Err(CommandError::new(
                ErrorCode::NotAllowedNow,
                "the blocklist is full",
            ));
        }
        tracing::info!(platform, number, minutes, reason = %record.reason, "number blocked");
        store
            .block_number(record)
            .await
            .map_err(|e| CommandError::new(ErrorCode::NotAllowedNow, format!("not stored: {e}")))
    }

    /// The platform `token` belongs to, if `platform` is it (or any, with None).
    fn authenticate(&self, platform: Option<&str>, token: &str) -> Option<String> {
        let found = self
            .tokens
            .iter()
            .find(|(_, expected)| same(expected.as_bytes(), token.as_bytes()))
            .map(|(name, _)| name.clone());
        match (found, platform) {
            (Some(name), Some(asked)) if name == asked => Some(name),
            (Some(name), None) => Some(name),
            _ => None,
        }
    }

    /// The platform of a unary call's `authorization: Bearer <token>`.
    fn platform_of<T>(&self, request: &Request<T>) -> Result<String, Status> {
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        self.authenticate(None, token).ok_or_else(|| {
            self.metrics.increment(Counter::WorkOrderAuthFailures);
            Status::unauthenticated("unknown token")
        })
    }

    async fn handle_command(&self, platform: &str, command: pb::Command) -> pb::CommandResult {
        self.metrics.increment(Counter::WorkOrderCommands);
        let id = command.command_id.clone();
        let outcome = self.carry_out(platform, command).await;
        if let Err(error) = &outcome {
            tracing::info!(platform, command = %id, %error, "work-order command refused");
        }
        match outcome {
            Ok(()) => pb::CommandResult {
                command_id: id,
                ok: true,
                error: pb::ErrorCode::Unspecified as i32,
                message: String::new(),
            },
            Err(error) => pb::CommandResult {
                command_id: id,
                ok: false,
                error: convert::error_code(error.code) as i32,
                message: error.message,
            },
        }
    }

    async fn carry_out(&self, platform: &str, command: pb::Command) -> Result<(), CommandError> {
        use pb::command::Action;
        let invalid = |what: &str| CommandError::new(ErrorCode::Invalid, what.to_string());
        let (reply, outcome) = oneshot::channel();
        let owned = platform.to_string();
        let (call_id, call_command) = match command.action {
            None => return Err(invalid("a command needs an action")),
            Some(Action::Reply(reply)) => return self.reply(platform, reply).await,
            Some(Action::Block(block)) => {
                return self
                    .block(platform, &block.number, Some((block.reason, block.minutes)))
                    .await
            }
            Some(Action::Unblock(unblock)) => {
                return self.block(platform, &unblock.number, None).await
            }
            Some(Action::AttachTicket(attach)) => {
                let ticket = attach
                    .ticket
                    .ok_or_else(|| invalid("attach_ticket needs a ticket"))?;
                (
                    attach.call_id,
                    CallCommand::AttachTicket {
                        platform: owned,
                        ticket: convert::ticket_from(ticket),
                        reply,
                    },
                )
            }
            Some(Action::Transfer(transfer)) => {
                if transfer.target.is_empty() {
                    return Err(invalid("transfer needs a target"));
                }
                (
                    transfer.call_id,
                    CallCommand::Transfer {
                        platform: owned,
                        target: transfer.target,
                        reply,
                    },
                )
            }
            Some(Action::Conference(conference)) => {
                if conference.target.is_empty() {
                    return Err(invalid("conference needs a target"));
                }
                (
                    conference.call_id,
                    CallCommand::Conference {
                        platform: owned,
                        target: conference.target,
                        reply,
                    },
                )
            }
            Some(Action::HangUp(hang_up)) => (
                hang_up.call_id,
                CallCommand::HangUp {
                    platform: owned,
                    party: hang_up.party,
                    reply,
                },
            ),
            Some(Action::Mute(mute)) => (
                mute.call_id,
                CallCommand::Mute {
                    party: mute.party,
                    muted: mute.muted,
                    reply,
                },
            ),
        };
        if call_id.is_empty() {
            return Err(invalid("the command names no call"));
        }
        self.registry.command(&call_id, platform, call_command)?;
        match tokio::time::timeout(COMMAND_TIMEOUT, outcome).await {
            Ok(Ok(result)) => result,
            _ => Err(CommandError::new(
                ErrorCode::UnknownCall,
                format!("call {call_id} ended before it carried the command out"),
            )),
        }
    }

    /// A platform's reply on a linkage goes to the platform at the linkage's other end.
    async fn reply(&self, platform: &str, reply: pb::Reply) -> Result<(), CommandError> {
        let path = self.store_path.clone();
        let id = reply.linkage_id.clone();
        let found = tokio::task::spawn_blocking(move || store::find_linkage(&path, &id))
            .await
            .ok()
            .and_then(Result::ok)
            .flatten();
        let Some(linkage) = found else {
            return Err(CommandError::new(
                ErrorCode::UnknownCall,
                format!("no linkage {}", reply.linkage_id),
            ));
        };
        let other = if linkage.to_platform.as_deref() == Some(platform) {
            linkage.from_platform.clone()
        } else if linkage.from_platform.as_deref() == Some(platform) {
            linkage.to_platform.clone()
        } else {
            return Err(CommandError::new(
                ErrorCode::NotPermitted,
                format!(
                    "linkage {} does not involve platform {platform}",
                    linkage.id
                ),
            ));
        };
        let Some(other) = other else {
            return Err(CommandError::new(
                ErrorCode::NotAllowedNow,
                "the other end of this linkage is no platform",
            ));
        };
        let mut event = CallEvent::new(
            EventKind::PeerReply,
            &linkage.call_id,
            unix_millis(SystemTime::now()),
        );
        event.linkage_id = Some(linkage.id.clone());
        event.reply = Some(convert::reply_from(reply));
        if let Ok(snapshot) = self.registry.get(&linkage.call_id, platform) {
            event.citizen_number = snapshot.citizen_number;
            event.called_number = snapshot.called_number;
            event.a = snapshot.a;
            event.b = snapshot.b;
        }
        event.platforms = vec![other];
        self.hub.emit(event);
        Ok(())
    }
}

/// Compares secrets in time that does not depend on where they differ.
fn same(expected: &[u8], given: &[u8]) -> bool {
    expected.len() == given.len()
        && expected
            .iter()
            .zip(given)
            .fold(0u8, |difference, (a, b)| difference | (a ^ b))
            == 0
}

#[tonic::async_trait]
impl pb::work_order_server::WorkOrder for WorkOrderService {
    type LinkStream = ReceiverStream<Result<pb::ServerMessage, Status>>;

    async fn link(
        &self,
        request: Request<Streaming<pb::ClientMessage>>,
    ) -> Result<Response<Self::LinkStream>, Status> {
        let mut inbound = request.into_inner();
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(pb::ClientMessage {
                kind: Some(pb::client_message::Kind::Hello(hello)),
            }))) => hello,
            _ => return Err(Status::invalid_argument("the first message must be Hello")),
        };
        let Some(platform) = self.authenticate(Some(&hello.platform), &hello.token) else {
            self.metrics.increment(Counter::WorkOrderAuthFailures);
            tracing::warn!(platform = %hello.platform, "work-order client refused: bad token");
            return Err(Status::unauthenticated(
                "unknown platform or wrong token for it",
            ));
        };
        let acknowledged = self.hub.acknowledged(&platform);
        let resume_after = if hello.resume_after > 0 {
            hello.resume_after
        } else {
            acknowledged
        };
        let committed = self.hub.subscribe(&platform);
        let latest = *committed.borrow();
        let reader = {
            let path = self.store_path.clone();
            tokio::task::spawn_blocking(move || OutboxReader::open(&path))
                .await
                .map_err(|_| Status::internal("store reader"))?
                .map_err(|error| Status::internal(error.to_string()))?
        };
        tracing::info!(%platform, resume_after, latest, "work-order client connected");
        self.metrics.add_gauge(Gauge::WorkOrderClients, 1);
        let (outbound, stream) = mpsc::channel(CLIENT_BUFFER);
        let welcome = pb::ServerMessage {
            kind: Some(pb::server_message::Kind::Welcome(pb::Welcome {
                platform: platform.clone(),
                latest,
                acknowledged,
            })),
        };
        let _ = outbound.send(Ok(welcome)).await;
        tokio::spawn(send_events(
            platform.clone(),
            resume_after,
            committed,
            Arc::new(Mutex::new(reader)),
            outbound.clone(),
            Arc::clone(&self.metrics),
            self.stop.clone(),
        ));
        let service = self.clone();
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    message = inbound.message() => message,
                    _ = service.stop.cancelled() => break,
                };
                let Ok(Some(message)) = message else {
                    break;
                };
                match message.kind {
                    Some(pb::client_message::Kind::Ack(ack)) => {
                        service.hub.acknowledge(&platform, ack.sequence).await;
                    }
                    Some(pb::client_message::Kind::Command(command)) => {
                        let result = service.handle_command(&platform, command).await;
                        let message = pb::ServerMessage {
                            kind: Some(pb::server_message::Kind::Result(result)),
                        };
                        if outbound.send(Ok(message)).await.is_err() {
                            break;
                        }
                    }
                    Some(pb::client_message::Kind::Hello(_)) | None => {}
                }
            }
            service.metrics.add_gauge(Gauge::WorkOrderClients, -1);
            tracing::info!(%platform, "work-order client gone");
        });
        Ok(Response::new(ReceiverStream::new(stream)))
    }

    async fn list_active_calls(
        &self,
        request: Request<pb::ListActiveCallsRequest>,
    ) -> Result<Response<pb::ListActiveCallsResponse>, Status> {
        let platform = self.platform_of(&request)?;
        let calls = self
            .registry
            .list(&platform)
            .iter()
            .map(convert::call)
            .collect();
        Ok(Response::new(pb::ListActiveCallsResponse { calls }))
    }

    async fn get_call(
        &self,
        request: Request<pb::GetCallRequest>,
    ) -> Result<Response<pb::CallInfo>, Status> {
        let platform = self.platform_of(&request)?;
        let call_id = request.into_inner().call_id;
        match self.registry.get(&call_id, &platform) {
            Ok(snapshot) => Ok(Response::new(convert::call(&snapshot))),
            Err(error) if error.code == ErrorCode::NotPermitted => {
                Err(Status::permission_denied(error.message))
            }
            Err(error) => Err(Status::not_found(error.message)),
        }
    }

    async fn get_linkage(
        &self,
        request: Request<pb::GetLinkageRequest>,
    ) -> Result<Response<pb::LinkageInfo>, Status> {
        let platform = self.platform_of(&request)?;
        let id = request.into_inner().linkage_id;
        let path = self.store_path.clone();
        let lookup = id.clone();
        let found = tokio::task::spawn_blocking(move || store::find_linkage(&path, &lookup))
            .await
            .map_err(|_| Status::internal("store reader"))?
            .map_err(|error| Status::internal(error.to_string()))?;
        let Some(linkage) = found else {
            return Err(Status::not_found(format!("no linkage {id}")));
        };
        let involved = [&linkage.from_platform, &linkage.to_platform]
            .iter()
            .any(|p| p.as_deref() == Some(platform.as_str()));
        if !involved {
            return Err(Status::permission_denied(format!(
                "linkage {id} does not involve platform {platform}"
            )));
        }
        Ok(Response::new(convert::linkage(&linkage)))
    }
}

/// Sends `platform`'s events after `after` as they are committed, read from the outbox, until
/// the client goes away.
async fn send_events(
    platform: String,
    mut after: u64,
    mut committed: tokio::sync::watch::Receiver<u64>,
    reader: Arc<Mutex<OutboxReader>>,
    outbound: mpsc::Sender<Result<pb::ServerMessage, Status>>,
    metrics: Arc<Metrics>,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        let latest = *committed.borrow_and_update();
        while after < latest {
            let (reader, name) = (Arc::clone(&reader), platform.clone());
            let page = tokio::task::spawn_blocking(move || {
                reader
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .read(&name, after, PAGE)
            })
            .await;
            let records = match page {
                Ok(Ok(records)) => records,
                Ok(Err(error)) => {
                    tracing::error!(%error, %platform, "outbox not readable");
                    return;
                }
                Err(_) => return,
            };
            let Some(last) = records.last().map(|r| r.sequence) else {
                // Pruned by retention: nothing left before `latest`.
                break;
            };
            for record in records {
                let event = match pb::Event::decode(record.body.as_slice()) {
                    Ok(event) => event,
                    Err(error) => {
                        tracing::error!(%error, sequence = record.sequence, "outbox event undecodable");
                        continue;
                    }
                };
                let message = pb::ServerMessage {
                    kind: Some(pb::server_message::Kind::Event(event)),
                };
                if outbound.send(Ok(message)).await.is_err() {
                    return;
                }
                metrics.increment(Counter::WorkOrderEventsSent);
            }
            after = last;
        }
        tokio::select! {
            changed = committed.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = outbound.closed() => return,
            _ = stop.cancelled() => return,
        }
    }
}

/// Serves the work-order service (with gRPC server reflection) on `listener`, over TLS when
/// `tls` is given, until `stop`.
pub async fn serve(
    service: WorkOrderService,
    listener: tokio::net::TcpListener,
    tls: Option<tonic::transport::ServerTlsConfig>,
    stop: tokio_util::sync::CancellationToken,
) {
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::DESCRIPTOR)
        .build_v1();
    let reflection = match reflection {
        Ok(reflection) => Some(reflection),
        Err(error) => {
            tracing::warn!(%error, "gRPC reflection unavailable");
            None
        }
    };
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = match builder.tls_config(tls) {
            Ok(builder) => builder,
            Err(error) => {
                tracing::error!(%error, "work-order gRPC TLS configuration refused");
                return;
            }
        };
    }
    let result = builder
        .add_service(pb::work_order_server::WorkOrderServer::new(service))
        .add_optional_service(reflection)
        .serve_with_incoming_shutdown(incoming, stop.cancelled())
        .await;
    if let Err(error) = result {
        tracing::error!(%error, "work-order gRPC server stopped");
    }
}
