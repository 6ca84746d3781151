//! One platform's `Link` stream: `Hello` and `Welcome`, then the platform's events as they
//! are committed, and the client's acknowledgements and commands.
//!
//! The store says up to which sequence a platform's events are committed; a stream takes
//! them from the newest kept in memory or, when it has fallen behind those, reads them back
//! from the store. So a slow client holds nothing but its own bounded send buffer, and a
//! reconnect is the same loop started from the acknowledged sequence.
//!
//! Nothing ends a stream silently: whatever ends it (a message over the limit, an `Ack` past
//! the newest event, a second `Hello`, the gateway stopping) is its final gRPC status, and
//! both halves stop with it. A client that closes its side ends the stream with OK once all
//! it sent is handled and its acknowledgements are on disk.

use std::sync::{Arc, Mutex, PoisonError};

use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Response, Status, Streaming};

use super::service::WorkOrderService;
use super::{
    convert, pb, COMMAND_WINDOW, HELLO_TIMEOUT, MAX_MESSAGE_BYTES, MAX_REPLY_BYTES,
    MAX_TICKET_BYTES,
};
use crate::metrics::{Counter, Gauge, Metrics};
use crate::store::{Acknowledged, OutboxReader};

/// Events a stream reads from the store at a time.
const PAGE: usize = 64;
/// Messages queued towards one client before its stream waits (a slow client waits alone).
const CLIENT_BUFFER: usize = 64;
/// How long a stopping gateway waits for a slow client to take its last events.
const STOPPING_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// What the gateway sends on a stream: messages, then at most one final status.
pub type LinkStream = ReceiverStream<Result<pb::LinkResponse, Status>>;

type Outbound = mpsc::Sender<Result<pb::LinkResponse, Status>>;

/// Opens a platform's stream: waits for its `Hello`, authenticates it, answers `Welcome` and
/// starts the two halves.
///
/// # Errors
/// The status that refuses the stream: INVALID_ARGUMENT (no Hello in time), UNAUTHENTICATED,
/// RESOURCE_EXHAUSTED (a source throttled for wrong tokens, or a first message over the
/// limit), OUT_OF_RANGE (`resume_after` past the newest event), INTERNAL (the store cannot be
/// read).
pub async fn open(
    service: WorkOrderService,
    source: Option<std::net::IpAddr>,
    mut inbound: Streaming<pb::LinkRequest>,
) -> Result<Response<LinkStream>, Status> {
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
        Ok(Ok(Some(pb::LinkRequest {
            kind: Some(pb::link_request::Kind::Hello(hello)),
        }))) => hello,
        Ok(Ok(Some(_))) => return Err(Status::invalid_argument("the first message must be Hello")),
        Ok(Ok(None)) => return Err(Status::invalid_argument("the stream ended before Hello")),
        Ok(Err(status)) => return Err(inbound_failure(status)),
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "no Hello within {} seconds",
                HELLO_TIMEOUT.as_secs()
            )))
        }
    };
    let platform = match service.authenticate(source, Some(&hello.platform), &hello.token) {
        Ok(platform) => platform,
        Err(status) => {
            tracing::warn!(platform = %hello.platform, ?source, reason = status.message(),
                "work-order client refused");
            return Err(status);
        }
    };
    // The stored position first: on a shared store, another node's commits and Acks may not
    // have been heard of here yet.
    let (reader, oldest, position) = {
        let location = service.store_location.clone();
        let name = platform.clone();
        tokio::task::spawn_blocking(move || {
            let mut reader = OutboxReader::at(&location)?;
            let oldest = reader.oldest(&name)?;
            let position = reader.position(&name)?;
            Ok::<_, crate::store::StoreError>((reader, oldest, position))
        })
        .await
        .map_err(|_| Status::internal("store reader"))?
        .map_err(|error| Status::internal(error.to_string()))?
    };
    service.hub.catch_up(&platform, position);
    let committed = service.hub.subscribe(&platform);
    let latest = *committed.borrow();
    let acknowledged = service.hub.acknowledged(&platform);
    let resume_after = match hello.resume_after {
        Some(after) if after > latest => {
            return Err(Status::out_of_range(format!(
                "resume_after {after} is past the newest event of platform {platform} ({latest}); \
                 leave it unset to resume after the last acknowledged one"
            )))
        }
        Some(after) => after,
        None => acknowledged,
    };
    tracing::info!(%platform, resume_after, latest, "work-order client connected");
    let (outbound, stream) = mpsc::channel(CLIENT_BUFFER);
    let welcome = pb::LinkResponse {
        kind: Some(pb::link_response::Kind::Welcome(pb::Welcome {
            platform: platform.clone(),
            latest,
            acknowledged,
            oldest,
            limits: Some(limits()),
        })),
    };
    let _ = outbound.send(Ok(welcome)).await;
    // Either half ends both: the stream's own token, under the gateway's.
    let ended = service.stop.child_token();
    tokio::spawn(send_events(
        Delivery {
            platform: platform.clone(),
            hub: Arc::clone(&service.hub),
            committed,
            reader,
            outbound: outbound.clone(),
            metrics: Arc::clone(&service.metrics),
        },
        resume_after,
        ended.clone(),
        service.stop.clone(),
    ));
    tokio::spawn(receive(service, platform, inbound, outbound, ended));
    Ok(Response::new(ReceiverStream::new(stream)))
}

fn limits() -> pb::Limits {
    pb::Limits {
        max_message_bytes: MAX_MESSAGE_BYTES as u32,
        max_ticket_bytes: MAX_TICKET_BYTES as u32,
        max_reply_bytes: MAX_REPLY_BYTES as u32,
        command_window: Some(convert::proto_duration(COMMAND_WINDOW)),
        hello_timeout: Some(convert::proto_duration(HELLO_TIMEOUT)),
    }
}

/// The status that ends a stream whose client message could not be read: a message over the
/// limit (tonic's decoder says OUT_OF_RANGE) says so; anything else (the client went away) is
/// passed on.
fn inbound_failure(status: Status) -> Status {
    if status.code() == tonic::Code::OutOfRange {
        Status::resource_exhausted(format!(
            "a message over the limit of {MAX_MESSAGE_BYTES} bytes (1 MiB) ends the stream: {}",
            status.message()
        ))
    } else {
        status
    }
}

/// The client's half: acknowledgements and commands, in order, until the client closes its
/// side, the stream ends with a status, or the gateway stops.
async fn receive(
    service: WorkOrderService,
    platform: String,
    mut inbound: Streaming<pb::LinkRequest>,
    outbound: Outbound,
    ended: CancellationToken,
) {
    service.metrics.add_gauge(Gauge::WorkOrderClients, 1);
    let end = |status: Status| {
        let outbound = outbound.clone();
        let ended = ended.clone();
        async move {
            tracing::info!(code = ?status.code(), message = status.message(), "work-order stream ended");
            // Behind what is queued (a client that does not read gets it as the connection
            // closes, or not at all).
            let _ = tokio::time::timeout(STOPPING_GRACE, outbound.send(Err(status))).await;
            ended.cancel();
        }
    };
    loop {
        let message = tokio::select! {
            message = inbound.message() => message,
            _ = ended.cancelled() => break,
        };
        let kind = match message {
            Ok(Some(pb::LinkRequest { kind })) => kind,
            // The client closed its side: everything it sent is handled, so the stream ends
            // (OK) once what is queued for it has gone. A client that wants its last Acks
            // kept closes its side and reads to the end.
            Ok(None) => {
                match service.hub.flush().await {
                    Ok(()) => ended.cancel(),
                    Err(error) => {
                        end(Status::unavailable(format!(
                            "acknowledgements not kept: {error}"
                        )))
                        .await
                    }
                }
                break;
            }
            Err(status) => {
                end(inbound_failure(status)).await;
                break;
            }
        };
        match kind {
            Some(pb::link_request::Kind::Ack(ack)) => {
                match service.hub.acknowledge(&platform, ack.sequence).await {
                    Ok(Acknowledged::Advanced | Acknowledged::Unchanged) => {}
                    Ok(Acknowledged::Behind { current }) => {
                        let notice = notice(
                            pb::NoticeCode::AckBehind,
                            format!(
                                "Ack {} ignored: platform {platform} has acknowledged {current}",
                                ack.sequence
                            ),
                        );
                        if outbound.send(Ok(notice)).await.is_err() {
                            break;
                        }
                    }
                    Ok(Acknowledged::PastNewest { latest }) => {
                        end(Status::out_of_range(format!(
                            "Ack {} is past the newest event of platform {platform} ({latest}): \
                             nothing was acknowledged",
                            ack.sequence
                        )))
                        .await;
                        break;
                    }
                    Err(error) => {
                        end(Status::unavailable(format!(
                            "acknowledgement not kept: {error}"
                        )))
                        .await;
                        break;
                    }
                }
            }
            Some(pb::link_request::Kind::Command(command)) => {
                let result = service.handle_command(&platform, command).await;
                let message = pb::LinkResponse {
                    kind: Some(pb::link_response::Kind::Result(result)),
                };
                if outbound.send(Ok(message)).await.is_err() {
                    break;
                }
            }
            Some(pb::link_request::Kind::Hello(_)) => {
                end(Status::invalid_argument("Hello comes once, first")).await;
                break;
            }
            None => {
                let notice = notice(
                    pb::NoticeCode::UnknownMessage,
                    "a message of a kind this gateway does not know was ignored".into(),
                );
                if outbound.send(Ok(notice)).await.is_err() {
                    break;
                }
            }
        }
    }
    service.metrics.add_gauge(Gauge::WorkOrderClients, -1);
    tracing::info!(%platform, "work-order client's side closed");
}

fn notice(code: pb::NoticeCode, message: String) -> pb::LinkResponse {
    pb::LinkResponse {
        kind: Some(pb::link_response::Kind::Notice(pb::Notice {
            code: code as i32,
            message,
        })),
    }
}

/// What the gateway's half of a stream works with.
struct Delivery {
    platform: String,
    hub: Arc<super::hub::EventHub>,
    /// The platform's newest committed sequence.
    committed: watch::Receiver<u64>,
    reader: OutboxReader,
    outbound: Outbound,
    metrics: Arc<Metrics>,
}

/// The gateway's half: the platform's events after `after` as they are committed, read from
/// the outbox, until the client goes away, the stream ends (`ended`) or the gateway stops
/// (`stop`: the stream ends with UNAVAILABLE, so the client knows to come back).
async fn send_events(
    delivery: Delivery,
    mut after: u64,
    ended: CancellationToken,
    stop: CancellationToken,
) {
    let Delivery {
        platform,
        hub,
        mut committed,
        reader,
        outbound,
        metrics,
    } = delivery;
    let reader = Arc::new(Mutex::new(reader));
    // Once the gateway is stopping, what is committed still goes, for a little while.
    let mut stopping: Option<tokio::time::Instant> = None;
    loop {
        // Read before `latest`: a stream that ended meanwhile still sends what is committed.
        let ending = ended.is_cancelled();
        let latest = *committed.borrow_and_update();
        while after < latest {
            if stop.is_cancelled() {
                let deadline =
                    *stopping.get_or_insert_with(|| tokio::time::Instant::now() + STOPPING_GRACE);
                if tokio::time::Instant::now() >= deadline {
                    break;
                }
            }
            // A stream that keeps up takes its events from memory; one that fell behind
            // reads them back from the store.
            let mut records = match hub.recent(&platform, after, PAGE) {
                Some(records) if !records.is_empty() => records,
                _ => {
                    let (reader, name) = (Arc::clone(&reader), platform.clone());
                    let page = tokio::task::spawn_blocking(move || {
                        reader
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .read(&name, after, PAGE)
                    })
                    .await;
                    match page {
                        Ok(Ok(records)) => records,
                        Ok(Err(error)) => {
                            tracing::error!(%error, %platform, "outbox not readable");
                            let failed = Status::internal(format!("outbox not readable: {error}"));
                            if let Some(permit) = reserve(&outbound, &stop, &mut stopping).await {
                                permit.send(Err(failed));
                            }
                            ended.cancel();
                            return;
                        }
                        Err(_) => return,
                    }
                }
            };
            // Committed but not yet announced: not to be acknowledged yet, so not sent yet.
            records.retain(|r| r.sequence <= latest);
            let Some(last) = records.last().map(|r| r.sequence) else {
                // Pruned by retention: nothing left before `latest`.
                break;
            };
            for record in records {
                let mut event = match pb::Event::decode(&*record.body) {
                    Ok(event) => event,
                    Err(error) => {
                        tracing::error!(%error, sequence = record.sequence, "outbox event undecodable");
                        continue;
                    }
                };
                event.sequence = record.sequence;
                event.event_id = record.event_id;
                super::hub::fit(&mut event);
                let message = pb::LinkResponse {
                    kind: Some(pb::link_response::Kind::Event(event)),
                };
                // None once the response is over (its final status sent, the client gone, or
                // a stopping gateway's grace passed).
                let Some(permit) = reserve(&outbound, &stop, &mut stopping).await else {
                    return;
                };
                permit.send(Ok(message));
                metrics.increment(Counter::WorkOrderEventsSent);
            }
            after = last;
        }
        if ending {
            // A stream's own end has sent its status already; a stopping gateway says so once
            // what is committed has gone.
            if stop.is_cancelled() {
                if let Some(permit) = reserve(&outbound, &stop, &mut stopping).await {
                    permit.send(Err(Status::unavailable("the gateway is stopping")));
                }
            }
            return;
        }
        tokio::select! {
            changed = committed.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = outbound.closed() => return,
            _ = ended.cancelled() => {}
        }
    }
}

/// Room for one more message towards the client: waits for it, but once the gateway is
/// stopping only until `stopping`'s deadline (set when the stop is seen), so a client that
/// does not read cannot hold the shutdown. None: no room will come.
async fn reserve<'a>(
    outbound: &'a Outbound,
    stop: &CancellationToken,
    stopping: &mut Option<tokio::time::Instant>,
) -> Option<mpsc::Permit<'a, Result<pb::LinkResponse, Status>>> {
    loop {
        if let Some(deadline) = *stopping {
            return tokio::time::timeout_at(deadline, outbound.reserve())
                .await
                .ok()?
                .ok();
        }
        tokio::select! {
            permit = outbound.reserve() => return permit.ok(),
            _ = stop.cancelled() => {
                *stopping = Some(tokio::time::Instant::now() + STOPPING_GRACE);
            }
        }
    }
}
