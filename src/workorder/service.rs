//! The tonic service of `hotline.workorder.v1`: who the client is, what its commands do (and
//! what a repeated one gets), the unary calls, and serving them all (with reflection) on the
//! work-order port. One platform's `Link` stream is [`super::stream`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use tokio::sync::oneshot;
use tonic::{Request, Response, Status, Streaming};

use super::commands::{fingerprint, CommandLog, Seen};
use super::hub::EventHub;
use super::registry::{CallCommand, CallRegistry, CommandDone, CommandError, ErrorCode};
use super::{
    convert, pb, CallEvent, EventKind, MAX_MESSAGE_BYTES, MAX_REPLY_BYTES, MAX_TICKET_BYTES,
};
use crate::call::blocklist::Blocklist;
use crate::metrics::{Counter, Metrics};
use crate::store::{self, unix_millis, Changes, Store, StoreError};

/// How long a command waits for its call's task (the step's commit included; SQLite may wait
/// 5 s for a lock) before its client is told to ask again; the first attempt's result is kept
/// for that repeat when it comes.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest command id.
const MAX_COMMAND_ID: usize = 128;
/// Longest call id, linkage id or target a command may name.
const MAX_ID: usize = 64;
/// Longest reason a Block may give (the list is held in memory).
const MAX_REASON: usize = 256;
/// Longest a Block may last.
const MAX_BLOCK: Duration = Duration::from_secs(10 * 366 * 24 * 3600);
/// Calls per page of `ListActiveCalls`: by default, and at most.
const PAGE_DEFAULT: usize = 100;
const PAGE_MAX: usize = 1000;
/// How long a connection may stay silent before HTTP/2 pings it, and how long the ping may
/// take: a client that vanished (a cut cable, a killed VM) is found and its stream closed.
const KEEPALIVE: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The work-order service.
#[derive(Clone)]
pub struct WorkOrderService {
    pub(super) hub: Arc<EventHub>,
    pub(super) registry: Arc<CallRegistry>,
    pub(super) store_location: store::StoreLocation,
    tokens: Arc<super::auth::Tokens>,
    throttle: Arc<super::auth::LoginThrottle>,
    pub(super) metrics: Arc<Metrics>,
    /// Ends every stream (the gateway is stopping).
    pub(super) stop: tokio_util::sync::CancellationToken,
    /// The API's blocklist (shared with screening) and the store that keeps it.
    pub(super) blocklist: Option<(Arc<Blocklist>, Store)>,
    commands: Arc<CommandLog>,
    /// Each peer's platform, for `GetStats`.
    peer_platforms: Arc<HashMap<String, String>>,
}

impl WorkOrderService {
    pub fn new(
        hub: Arc<EventHub>,
        registry: Arc<CallRegistry>,
        store_location: store::StoreLocation,
        tokens: HashMap<String, String>,
        metrics: Arc<Metrics>,
        stop: tokio_util::sync::CancellationToken,
    ) -> WorkOrderService {
        WorkOrderService {
            hub,
            registry,
            store_location,
            tokens: Arc::new(super::auth::Tokens::new(tokens)),
            throttle: Arc::default(),
            metrics,
            stop,
            blocklist: None,
            commands: Arc::new(CommandLog::default()),
            peer_platforms: Arc::default(),
        }
    }

    /// Each peer's platform (`[[peer]] platform`), which `GetStats` counts the desks under.
    #[must_use]
    pub fn with_peer_platforms(mut self, platforms: HashMap<String, String>) -> WorkOrderService {
        self.peer_platforms = Arc::new(platforms);
        self
    }

    /// Lets the platforms block and unblock numbers on `blocklist`, kept in `store`.
    #[must_use]
    pub fn with_blocklist(mut self, blocklist: Arc<Blocklist>, store: Store) -> WorkOrderService {
        self.blocklist = Some((blocklist, store));
        self
    }

    /// The platform `token` belongs to, if `platform` is it (or any, with None), for a client
    /// at `source`.
    ///
    /// # Errors
    /// UNAUTHENTICATED for a wrong token; RESOURCE_EXHAUSTED for a source that brought too
    /// many wrong ones lately (its logins wait out the window, whatever token they bring).
    pub(super) fn authenticate(
        &self,
        source: Option<std::net::IpAddr>,
        platform: Option<&str>,
        token: &str,
    ) -> Result<String, Status> {
        let now = Instant::now();
        if let Some(source) = source.filter(|s| !self.throttle.allows(*s, now)) {
            self.metrics.increment(Counter::WorkOrderAuthFailures);
            tracing::debug!(%source, "work-order login refused: too many wrong tokens");
            return Err(Status::resource_exhausted(format!(
                "too many wrong tokens from this address: wait up to {} s",
                super::auth::THROTTLE_WINDOW.as_secs()
            )));
        }
        let found = self.tokens.platform_of(token);
        match (found, platform) {
            (Some(name), Some(asked)) if name == asked => return Ok(name.to_string()),
            (Some(name), None) => return Ok(name.to_string()),
            _ => {}
        }
        self.metrics.increment(Counter::WorkOrderAuthFailures);
        if let Some(source) = source {
            self.throttle.failed(source, now);
        }
        Err(Status::unauthenticated(match platform {
            Some(_) => "unknown platform or wrong token for it",
            None => "unknown token",
        }))
    }

    /// The platform of a unary call's `authorization: Bearer <token>`.
    fn platform_of<T>(&self, request: &Request<T>) -> Result<String, Status> {
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        self.authenticate(request.remote_addr().map(|a| a.ip()), None, token)
    }

    /// Carries `command` out once per `command_id`: a repeat gets the first one's result.
    pub(super) async fn handle_command(
        &self,
        platform: &str,
        command: pb::Command,
    ) -> pb::CommandResult {
        self.metrics.increment(Counter::WorkOrderCommands);
        let id = command.command_id.clone();
        if id.is_empty() || id.len() > MAX_COMMAND_ID {
            return result_of(
                &id,
                Err(CommandError::new(
                    ErrorCode::Invalid,
                    format!(
                        "command_id is required, 1 to {MAX_COMMAND_ID} bytes (it makes a repeated command safe)"
                    ),
                )),
            );
        }
        // A call another node carries: the command goes there, its result comes back.
        if let Some(result) = self.carried_elsewhere(platform, &command).await {
            return result;
        }
        let pending =
            match self
                .commands
                .begin(platform, &id, fingerprint(&command), Instant::now())
            {
                Seen::New(pending) => pending,
                Seen::Repeat(first) => {
                    self.metrics.increment(Counter::WorkOrderCommandsRepeated);
                    return first.result().await.unwrap_or_else(|| {
                        result_of(&id, Err(unconfirmed("the first command with this id")))
                    });
                }
                Seen::Reused => {
                    return result_of(
                        &id,
                        Err(CommandError::new(
                            ErrorCode::Invalid,
                            format!(
                        "command_id {:?} was used for another command within the last {} minutes",
                        shown(&id),
                        super::COMMAND_WINDOW.as_secs() / 60
                    ),
                        )),
                    )
                }
            };
        let outcome = match self.carry_out(platform, command).await {
            Carried::Now(outcome) => outcome,
            Carried::Later(mut outcome) => {
                match tokio::time::timeout(COMMAND_TIMEOUT, &mut outcome).await {
                    Ok(Ok(outcome)) => outcome,
                    Ok(Err(_)) => Err(CommandError::new(
                        ErrorCode::UnknownCall,
                        "the call ended before it carried the command out",
                    )),
                    Err(_) => {
                        // Still under way: a repeat gets the result when it comes.
                        let late = id.clone();
                        tokio::spawn(async move {
                            let outcome = outcome.await.unwrap_or_else(|_| {
                                Err(CommandError::new(
                                    ErrorCode::UnknownCall,
                                    "the call ended before it carried the command out",
                                ))
                            });
                            pending.finish(&result_of(&late, outcome));
                        });
                        return result_of(&id, Err(unconfirmed("the command")));
                    }
                }
            }
        };
        if let Err(error) = &outcome {
            tracing::info!(platform, command = %shown(&id), %error, "work-order command refused");
        }
        let result = result_of(&id, outcome);
        // Told to try again: the repeat is carried out afresh, not answered from here.
        if result.error != pb::ErrorCode::Unavailable as i32 {
            pending.finish(&result);
        }
        result
    }

    /// Carries a command out: at once, or (a call's command) once its call's task answers.
    async fn carry_out(&self, platform: &str, command: pb::Command) -> Carried {
        use pb::command::Action;
        let invalid = |what: String| Carried::Now(Err(CommandError::new(ErrorCode::Invalid, what)));
        let (reply, outcome) = oneshot::channel();
        let owned = platform.to_string();
        let (call_id, call_command) = match command.action {
            None => return invalid("a command needs an action".into()),
            Some(Action::Reply(reply)) => {
                return Carried::Now(self.reply(platform, reply, &command.command_id).await)
            }
            Some(Action::Block(block)) => {
                let duration = match &block.duration {
                    None => Duration::ZERO,
                    Some(d) => match convert::duration(d).filter(|d| *d <= MAX_BLOCK) {
                        Some(duration) => duration,
                        None => return invalid("duration must be 0 to 10 years".into()),
                    },
                };
                return Carried::Now(
                    self.block(platform, &block.number, Some((block.reason, duration)))
                        .await,
                );
            }
            Some(Action::Unblock(unblock)) => {
                return Carried::Now(self.block(platform, &unblock.number, None).await)
            }
            Some(Action::AttachTicket(attach)) => {
                let Some(ticket) = attach.ticket else {
                    return invalid("attach_ticket needs a ticket".into());
                };
                let size = prost::Message::encoded_len(&ticket);
                if size > MAX_TICKET_BYTES {
                    return invalid(format!(
                        "the ticket is {size} bytes encoded; the limit is {MAX_TICKET_BYTES} bytes (256 KiB)"
                    ));
                }
                (
                    attach.call_id,
                    CallCommand::AttachTicket {
                        platform: owned,
                        ticket: Box::new(ticket),
                        base_version: attach.base_version,
                        reply,
                    },
                )
            }
            Some(Action::Transfer(transfer)) => {
                if transfer.target.is_empty() || transfer.target.len() > MAX_ID {
                    return invalid(format!("transfer needs a target of 1 to {MAX_ID} bytes"));
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
                if conference.target.is_empty() || conference.target.len() > MAX_ID {
                    return invalid(format!("conference needs a target of 1 to {MAX_ID} bytes"));
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
            Some(Action::Mute(mute)) => {
                let Some(party) = mute.party else {
                    return invalid("mute needs a party".into());
                };
                (
                    mute.call_id,
                    CallCommand::Mute {
                        party,
                        muted: mute.muted,
                        reply,
                    },
                )
            }
            Some(Action::PauseRecording(pause)) => (
                pause.call_id,
                CallCommand::Recording {
                    platform: owned,
                    paused: true,
                    reply,
                },
            ),
            Some(Action::ResumeRecording(resume)) => (
                resume.call_id,
                CallCommand::Recording {
                    platform: owned,
                    paused: false,
                    reply,
                },
            ),
        };
        if call_id.is_empty() || call_id.len() > MAX_ID {
            return invalid(format!(
                "the command names no call (a call id of 1 to {MAX_ID} bytes)"
            ));
        }
        match self.registry.command(&call_id, platform, call_command) {
            Ok(()) => Carried::Later(outcome),
            Err(error) => Carried::Now(Err(error)),
        }
    }

    /// Block / Unblock: the gateway's list, not a call's.
    async fn block(
        &self,
        platform: &str,
        number: &str,
        entry: Option<(String, Duration)>,
    ) -> Result<CommandDone, CommandError> {
        let digits = number.strip_prefix('+').unwrap_or(number);
        let valid =
            !digits.is_empty() && number.len() <= 32 && digits.bytes().all(|b| b.is_ascii_digit());
        if !valid {
            return Err(CommandError::new(
                ErrorCode::Invalid,
                format!(
                    "{:?} is no phone number (up to 32 digits, optionally a leading +)",
                    shown(number)
                ),
            ));
        }
        let Some((blocklist, store)) = &self.blocklist else {
            return Err(CommandError::new(
                ErrorCode::NotAllowedNow,
                "this gateway keeps no blocklist",
            ));
        };
        let not_stored =
            |e: StoreError| CommandError::new(ErrorCode::Unavailable, format!("not stored: {e}"));
        // On disk first, then in force: what the result confirms survives a restart.
        let mut changes = Changes::default();
        let Some((reason, duration)) = entry else {
            // An entry that expired meanwhile leaves its row: it goes too.
            changes.unblock_number(number);
            store.write(changes).await.map_err(not_stored)?;
            if !blocklist.unblock(number) {
                return Err(CommandError::new(
                    ErrorCode::Invalid,
                    format!("{number} is not on the API's blocklist"),
                ));
            }
            tracing::info!(platform, number, "number taken off the blocklist");
            return Ok(CommandDone::default());
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
            expires_at: (!duration.is_zero()).then(|| now + duration.as_millis() as i64),
        };
        let full = || CommandError::new(ErrorCode::NotAllowedNow, "the blocklist is full");
        if !blocklist.has_room(number, now) {
            return Err(full());
        }
        changes.block_number(record.clone());
        store.write(changes).await.map_err(not_stored)?;
        if !blocklist.block(record.clone()) {
            // Filled meanwhile by another command: the row goes again.
            let mut undo = Changes::default();
            undo.unblock_number(number);
            let _ = store.write(undo).await;
            return Err(full());
        }
        tracing::info!(platform, number, minutes = duration.as_secs() / 60, reason = %record.reason, "number blocked");
        Ok(CommandDone::default())
    }

    /// A platform's reply on a linkage goes to the platform at the linkage's other end, and
    /// into the linkage's record, in one commit. Its event id comes from the command's: a
    /// reply repeated after a restart (the window forgotten) is a duplicate by that id.
    async fn reply(
        &self,
        platform: &str,
        reply: pb::Reply,
        command_id: &str,
    ) -> Result<CommandDone, CommandError> {
        if reply.linkage_id.is_empty() || reply.linkage_id.len() > MAX_ID {
            return Err(CommandError::new(
                ErrorCode::Invalid,
                format!("reply needs a linkage id of 1 to {MAX_ID} bytes"),
            ));
        }
        let size = prost::Message::encoded_len(&reply);
        if size > MAX_REPLY_BYTES {
            return Err(CommandError::new(
                ErrorCode::Invalid,
                format!(
                    "the reply is {size} bytes encoded; the limit is {MAX_REPLY_BYTES} bytes (64 KiB)"
                ),
            ));
        }
        let location = self.store_location.clone();
        let id = reply.linkage_id.clone();
        let found = tokio::task::spawn_blocking(move || location.find_linkage(&id))
            .await
            .ok()
            .and_then(Result::ok)
            .flatten();
        let Some(linkage) = found else {
            return Err(CommandError::new(
                ErrorCode::UnknownCall,
                format!("no linkage {:?}", reply.linkage_id),
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
        let now = SystemTime::now();
        let mut event = CallEvent::new(EventKind::PeerReply, &linkage.call_id, now);
        event.linkage_id = Some(linkage.id.clone());
        if let Ok(snapshot) = self.registry.get(&linkage.call_id, platform) {
            event.citizen_number = snapshot.citizen_number;
            event.called_number = snapshot.called_number;
            event.caller_leg = snapshot.caller_leg;
            event.called_leg = snapshot.called_leg;
        }
        event.platforms = vec![other];
        let mut changes = Changes::default();
        changes.linkage_reply(
            &linkage.id,
            &reply.incident_number,
            &reply.disposition,
            unix_millis(now),
        );
        event.reply = Some(reply);
        let event_id = super::hub::event_id_of(platform, command_id);
        self.hub
            .emit(&event, changes, Some(event_id))
            .await
            .map_err(|e| CommandError::new(ErrorCode::Unavailable, format!("not stored: {e}")))?;
        Ok(CommandDone::default())
    }
}

/// Compares secrets in time that does not depend on where they differ.
/// What a command comes to, as its platform gets it.
pub(super) fn result_of(
    command_id: &str,
    outcome: Result<CommandDone, CommandError>,
) -> pb::CommandResult {
    match outcome {
        Ok(done) => pb::CommandResult {
            command_id: command_id.to_string(),
            ok: true,
            ticket_version: done.ticket_version,
            ..pb::CommandResult::default()
        },
        Err(error) => pb::CommandResult {
            command_id: command_id.to_string(),
            ok: false,
            error: convert::error_code(error.code) as i32,
            message: error.message,
            ..pb::CommandResult::default()
        },
    }
}

/// A command not confirmed (yet): ask again with the same id.
fn unconfirmed(what: &str) -> CommandError {
    CommandError::new(
        ErrorCode::Unavailable,
        format!(
            "{what} is not confirmed yet; send it again with the same command_id for its result"
        ),
    )
}

/// At most 64 characters of a client's text, for a message or the log.
fn shown(text: &str) -> String {
    text.chars().take(64).collect()
}

/// A command carried out at once, or handed to its call.
enum Carried {
    Now(Result<CommandDone, CommandError>),
    Later(oneshot::Receiver<super::registry::CommandOutcome>),
}

/// A `ListActiveCalls` request's page size and where it starts.
fn page_of(request: &pb::ListActiveCallsRequest) -> Result<(usize, Option<(i64, String)>), Status> {
    let size = match request.page_size {
        0 => PAGE_DEFAULT,
        n if n < 0 => return Err(Status::invalid_argument("page_size must not be negative")),
        n => (n as usize).min(PAGE_MAX),
    };
    let after =
        if request.page_token.is_empty() {
            None
        } else {
            Some(parse_page_token(&request.page_token).ok_or_else(|| {
                Status::invalid_argument("page_token is not one this gateway gave")
            })?)
        };
    Ok((size, after))
}

/// A page of `listed` (in order), at most `size` calls and one message; `more`: calls follow
/// beyond `listed`.
fn page(
    mut listed: Vec<((i64, String), pb::Call)>,
    mut more: bool,
    size: usize,
) -> pb::ListActiveCallsResponse {
    if listed.len() > size {
        listed.truncate(size);
        more = true;
    }
    // A page stays within a message: tickets may make a call 256 KiB.
    let mut calls = Vec::new();
    let mut bytes = 0;
    let mut last = None;
    for (key, call) in listed {
        let size = prost::Message::encoded_len(&call) + 8;
        if !calls.is_empty() && bytes + size > MAX_MESSAGE_BYTES - 1024 {
            more = true;
            break;
        }
        bytes += size;
        calls.push(call);
        last = Some(key);
    }
    let next_page_token = match last {
        Some(last) if more => page_token(&last),
        _ => String::new(),
    };
    pb::ListActiveCallsResponse {
        calls,
        next_page_token,
    }
}

impl WorkOrderService {
    /// This node's own page for `request` (what another node of the cluster asks for).
    pub(super) fn local_page(
        &self,
        platform: &str,
        request: &pb::ListActiveCallsRequest,
    ) -> pb::ListActiveCallsResponse {
        let Ok((size, after)) = page_of(request) else {
            return pb::ListActiveCallsResponse::default();
        };
        let (local, more) = self.local_calls(platform, after.as_ref(), size);
        page(local, more, size)
    }
}

/// A `ListActiveCalls` page token: where the previous page ended (start time, call id).
fn page_token(after: &(i64, String)) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{}:{}", after.0, after.1))
}

fn parse_page_token(token: &str) -> Option<(i64, String)> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (started, id) = text.split_once(':')?;
    Some((started.parse().ok()?, id.to_string()))
}

#[tonic::async_trait]
impl pb::work_order_service_server::WorkOrderService for WorkOrderService {
    type LinkStream = super::stream::LinkStream;

    async fn link(
        &self,
        request: Request<Streaming<pb::LinkRequest>>,
    ) -> Result<Response<Self::LinkStream>, Status> {
        let source = request.remote_addr().map(|a| a.ip());
        super::stream::open(self.clone(), source, request.into_inner()).await
    }

    async fn list_active_calls(
        &self,
        request: Request<pb::ListActiveCallsRequest>,
    ) -> Result<Response<pb::ListActiveCallsResponse>, Status> {
        let platform = self.platform_of(&request)?;
        let request = request.into_inner();
        let (size, after) = page_of(&request)?;
        let (local, more) = self.local_calls(&platform, after.as_ref(), size);
        // On a cluster, the other nodes' calls too, merged in the same order.
        let (listed, elsewhere_more) = self.calls_elsewhere(&platform, &request, local).await?;
        Ok(Response::new(page(listed, more || elsewhere_more, size)))
    }

    async fn get_call(
        &self,
        request: Request<pb::GetCallRequest>,
    ) -> Result<Response<pb::GetCallResponse>, Status> {
        let platform = self.platform_of(&request)?;
        let call_id = request.into_inner().call_id;
        // A call another node of the cluster carries: that node answers.
        if let Some(answer) = self.call_elsewhere(&platform, &call_id).await {
            return answer.map(Response::new);
        }
        match self.registry.get(&call_id, &platform) {
            Ok(snapshot) => Ok(Response::new(pb::GetCallResponse {
                call: Some(convert::call(&snapshot)),
            })),
            Err(error) if error.code == ErrorCode::NotPermitted => {
                Err(Status::permission_denied(error.message))
            }
            Err(error) => Err(Status::not_found(error.message)),
        }
    }

    async fn get_linkage(
        &self,
        request: Request<pb::GetLinkageRequest>,
    ) -> Result<Response<pb::GetLinkageResponse>, Status> {
        let platform = self.platform_of(&request)?;
        let id = request.into_inner().linkage_id;
        let location = self.store_location.clone();
        let lookup = id.clone();
        let found = tokio::task::spawn_blocking(move || location.find_linkage(&lookup))
            .await
            .map_err(|_| Status::internal("store reader"))?
            .map_err(|error| Status::internal(error.to_string()))?;
        let Some(linkage) = found else {
            return Err(Status::not_found(format!("no linkage {id:?}")));
        };
        let involved = [&linkage.from_platform, &linkage.to_platform]
            .iter()
            .any(|p| p.as_deref() == Some(platform.as_str()));
        if !involved {
            return Err(Status::permission_denied(format!(
                "linkage {id} does not involve platform {platform}"
            )));
        }
        Ok(Response::new(pb::GetLinkageResponse {
            linkage: Some(convert::linkage(&linkage)),
        }))
    }

    async fn get_stats(
        &self,
        request: Request<pb::GetStatsRequest>,
    ) -> Result<Response<pb::GetStatsResponse>, Status> {
        let platform = self.platform_of(&request)?;
        let request = request.into_inner();
        super::stats::figures_of(
            &platform,
            &request,
            &self.store_location,
            &self.peer_platforms,
        )
        .await
        .map(Response::new)
    }
}

/// Serves the work-order service (with gRPC server reflection, v1 and v1alpha) on `listener`,
/// over TLS when `tls` is given, until `stop`.
pub async fn serve(
    service: WorkOrderService,
    listener: tokio::net::TcpListener,
    tls: Option<tonic::transport::ServerTlsConfig>,
    stop: tokio_util::sync::CancellationToken,
) {
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::DESCRIPTOR)
    };
    let (v1, v1alpha) = match (reflection().build_v1(), reflection().build_v1alpha()) {
        (Ok(v1), Ok(v1alpha)) => (Some(v1), Some(v1alpha)),
        (Err(error), _) | (_, Err(error)) => {
            tracing::warn!(%error, "gRPC reflection unavailable");
            (None, None)
        }
    };
    // Without TCP_NODELAY a unary answer's trailers wait for the client's delayed ACK (40 ms).
    let incoming = tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(KEEPALIVE));
    let mut builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT));
    if let Some(tls) = tls {
        builder = match builder.tls_config(tls) {
            Ok(builder) => builder,
            Err(error) => {
                tracing::error!(%error, "work-order gRPC TLS configuration refused");
                return;
            }
        };
    }
    let work_order = pb::work_order_service_server::WorkOrderServiceServer::new(service)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let result = builder
        .add_service(work_order)
        .add_optional_service(v1)
        .add_optional_service(v1alpha)
        .serve_with_incoming_shutdown(incoming, stop.cancelled())
        .await;
    if let Err(error) = result {
        tracing::error!(%error, "work-order gRPC server stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_go_both_ways_and_strangers_are_refused() {
        let after = (1_795_305_600_123, "7cf4483a795ce051".to_string());
        assert_eq!(parse_page_token(&page_token(&after)), Some(after));
        assert_eq!(parse_page_token("not a token"), None);
        assert_eq!(parse_page_token(""), None);
    }
}
