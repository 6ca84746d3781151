//! A platform's client of the work-order link, as the tests play the 12345 work-order system
//! and the 110 CAD: a `Link` stream with its events, commands and acknowledgements.

use std::collections::VecDeque;
use std::net::SocketAddr;

use hotline_gateway::workorder::pb;
use pb::command::Action;
use pb::link_request::Kind as Out;
use pb::link_response::Kind as In;
use pb::EventType;

use super::WAIT;

/// A platform's client on its `Link` stream.
pub(crate) struct Platform {
    pub outbound: tokio::sync::mpsc::Sender<pb::LinkRequest>,
    pub inbound: tonic::Streaming<pb::LinkResponse>,
    pub welcome: pb::Welcome,
    /// Events that arrived while waiting for something else.
    pub events: VecDeque<pb::Event>,
    next_command: u32,
}

impl Platform {
    pub(crate) async fn connect(
        grpc: SocketAddr,
        platform: &str,
        token: &str,
        resume_after: Option<u64>,
    ) -> Platform {
        match Self::try_connect(grpc, platform, token, resume_after).await {
            Ok(p) => p,
            Err(status) => panic!("{platform} refused: {status}"),
        }
    }

    pub(crate) async fn try_connect(
        grpc: SocketAddr,
        platform: &str,
        token: &str,
        resume_after: Option<u64>,
    ) -> Result<Platform, tonic::Status> {
        let mut client = match pb::work_order_service_client::WorkOrderServiceClient::connect(
            format!("http://{grpc}"),
        )
        .await
        {
            Ok(c) => c,
            Err(e) => panic!("connect {grpc}: {e}"),
        };
        let (outbound, requests) = tokio::sync::mpsc::channel(16);
        let hello = pb::LinkRequest {
            kind: Some(Out::Hello(pb::Hello {
                platform: platform.into(),
                token: token.into(),
                resume_after,
            })),
        };
        let _ = outbound.send(hello).await;
        let mut inbound = client
            .link(tokio_stream::wrappers::ReceiverStream::new(requests))
            .await?
            .into_inner();
        let welcome = match tokio::time::timeout(WAIT, inbound.message()).await {
            Ok(Ok(Some(pb::LinkResponse {
                kind: Some(In::Welcome(w)),
            }))) => w,
            Ok(Err(status)) => return Err(status),
            other => panic!("no welcome: {other:?}"),
        };
        Ok(Platform {
            outbound,
            inbound,
            welcome,
            events: VecDeque::new(),
            next_command: 0,
        })
    }

    pub(crate) async fn receive(&mut self) -> pb::LinkResponse {
        match tokio::time::timeout(WAIT, self.inbound.message()).await {
            Ok(Ok(Some(message))) => message,
            other => panic!("stream ended or silent: {other:?}"),
        }
    }

    /// The next event; it must be of `kind`.
    pub(crate) async fn expect(&mut self, kind: EventType) -> pb::Event {
        let event = match self.events.pop_front() {
            Some(event) => event,
            None => loop {
                if let Some(In::Event(event)) = self.receive().await.kind {
                    break event;
                }
            },
        };
        assert_eq!(
            EventType::try_from(event.r#type).ok(),
            Some(kind),
            "expected {kind:?}, got {event:?}"
        );
        event
    }

    /// Skips events until one of `kind`.
    pub(crate) async fn until(&mut self, kind: EventType) -> pb::Event {
        loop {
            let event = match self.events.pop_front() {
                Some(event) => event,
                None => match self.receive().await.kind {
                    Some(In::Event(event)) => event,
                    _ => continue,
                },
            };
            if EventType::try_from(event.r#type).ok() == Some(kind) {
                return event;
            }
        }
    }

    /// Sends a command; returns its result (events meanwhile are kept for `expect`).
    pub(crate) async fn command(&mut self, action: Action) -> pb::CommandResult {
        self.next_command += 1;
        let id = format!("c{}", self.next_command);
        self.command_with_id(&id, action).await
    }

    /// As [`Platform::command`], with the command id given.
    pub(crate) async fn command_with_id(&mut self, id: &str, action: Action) -> pb::CommandResult {
        let id = id.to_string();
        let command = pb::LinkRequest {
            kind: Some(Out::Command(pb::Command {
                command_id: id.clone(),
                action: Some(action),
            })),
        };
        let _ = self.outbound.send(command).await;
        loop {
            match self.receive().await.kind {
                Some(In::Result(result)) => {
                    assert_eq!(result.command_id, id);
                    return result;
                }
                Some(In::Event(event)) => self.events.push_back(event),
                _ => {}
            }
        }
    }

    /// Sends a message as it is.
    pub(crate) async fn send(&mut self, kind: Out) {
        let _ = self
            .outbound
            .send(pb::LinkRequest { kind: Some(kind) })
            .await;
    }

    /// The status the gateway ends the stream with (events and results before it are kept).
    pub(crate) async fn status(&mut self) -> tonic::Status {
        loop {
            match tokio::time::timeout(WAIT, self.inbound.message()).await {
                Ok(Ok(Some(message))) => match message.kind {
                    Some(In::Event(event)) => self.events.push_back(event),
                    _ => continue,
                },
                Ok(Err(status)) => return status,
                other => panic!("the stream did not end with a status: {other:?}"),
            }
        }
    }

    pub(crate) async fn ack(&mut self, sequence: u64) {
        let _ = self
            .outbound
            .send(pb::LinkRequest {
                kind: Some(Out::Ack(pb::Ack { sequence })),
            })
            .await;
    }
}
