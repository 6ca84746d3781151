//! The work-order link across the nodes of a cluster: a command for a call another node
//! carries is forwarded to that node (through the shared store, [`crate::store::Store::forward`])
//! and its result comes back on the stream it was sent on; `ListActiveCalls` lists every
//! node's calls; and this node answers what the others forward to it.

use prost::Message;
use tonic::Status;

use super::registry::{CommandError, ErrorCode};
use super::service::{result_of, WorkOrderService};
use super::{convert, pb};
use crate::store::{Owner, RequestKind, Store};

/// Another node's answer to `GetCall` ([`WorkOrderService::local_call`]); None if unreadable.
fn call_answer(body: &[u8]) -> Option<Result<pb::GetCallResponse, Status>> {
    let (kind, rest) = body.split_first()?;
    let message = || String::from_utf8_lossy(rest).into_owned();
    match kind {
        0 => pb::GetCallResponse::decode(rest).ok().map(Ok),
        1 => Some(Err(Status::not_found(message()))),
        2 => Some(Err(Status::permission_denied(message()))),
        _ => None,
    }
}

/// A call's place in `ListActiveCalls`' order: its start, then its id.
pub(super) type Position = (i64, String);

impl WorkOrderService {
    /// The shared store, when this node is one of a cluster.
    fn shared_store(&self) -> Option<&Store> {
        self.blocklist
            .as_ref()
            .map(|(_, store)| store)
            .filter(|store| store.is_shared())
    }

    /// The call a command acts on: its `call_id`, or a reply's linkage's call.
    async fn call_of(&self, command: &pb::Command) -> Option<String> {
        use pb::command::Action;
        match command.action.as_ref()? {
            Action::AttachTicket(a) => Some(a.call_id.clone()),
            Action::Transfer(t) => Some(t.call_id.clone()),
            Action::Conference(c) => Some(c.call_id.clone()),
            Action::HangUp(h) => Some(h.call_id.clone()),
            Action::Mute(m) => Some(m.call_id.clone()),
            Action::PauseRecording(p) => Some(p.call_id.clone()),
            Action::ResumeRecording(r) => Some(r.call_id.clone()),
            Action::Reply(reply) => {
                let (location, id) = (self.store_location.clone(), reply.linkage_id.clone());
                tokio::task::spawn_blocking(move || location.find_linkage(&id))
                    .await
                    .ok()?
                    .ok()?
                    .map(|linkage| linkage.call_id)
            }
            Action::Block(_) | Action::Unblock(_) => None,
        }
    }

    /// The result of `command` when another node carries its call (None: this node answers
    /// it, as an embedded store's gateway always does).
    pub(super) async fn carried_elsewhere(
        &self,
        platform: &str,
        command: &pb::Command,
    ) -> Option<pb::CommandResult> {
        let store = self.shared_store()?;
        let call_id = self.call_of(command).await.filter(|id| !id.is_empty())?;
        if self.registry.carries(&call_id) {
            return None;
        }
        let id = &command.command_id;
        let refused =
            |code, message: String| Some(result_of(id, Err(CommandError::new(code, message))));
        match store.owner_of(&call_id).await {
            Ok(Owner::Node(node)) => {
                let answer = store
                    .forward(
                        &node,
                        RequestKind::Command,
                        platform,
                        command.encode_to_vec(),
                    )
                    .await;
                match answer.map(|body| pb::CommandResult::decode(&*body)) {
                    Ok(Ok(result)) => Some(result),
                    Ok(Err(_)) => refused(
                        ErrorCode::Unavailable,
                        format!("node {node}'s answer for call {call_id} was unreadable"),
                    ),
                    Err(error) => refused(
                        ErrorCode::Unavailable,
                        format!(
                            "call {call_id} is on node {node}: {error}; send it again with the same command_id for its result"
                        ),
                    ),
                }
            }
            Ok(Owner::Lost(node)) => refused(
                ErrorCode::UnknownCall,
                format!(
                    "call {call_id} was on node {node}, which is lost: its records are being closed"
                ),
            ),
            Ok(Owner::Ended) => {
                refused(ErrorCode::UnknownCall, format!("call {call_id} has ended"))
            }
            Ok(Owner::Here | Owner::Unknown) => None,
            Err(error) => refused(
                ErrorCode::Unavailable,
                format!("the cluster's store cannot be read: {error}"),
            ),
        }
    }

    /// `GetCall` for a call another node carries, answered by that node (None: this node
    /// answers).
    pub(super) async fn call_elsewhere(
        &self,
        platform: &str,
        call_id: &str,
    ) -> Option<Result<pb::GetCallResponse, Status>> {
        let store = self.shared_store()?;
        if call_id.is_empty() || self.registry.carries(call_id) {
            return None;
        }
        match store.owner_of(call_id).await {
            Ok(Owner::Node(node)) => {
                let request = pb::GetCallRequest {
                    call_id: call_id.to_string(),
                };
                let answer = store
                    .forward(
                        &node,
                        RequestKind::GetCall,
                        platform,
                        request.encode_to_vec(),
                    )
                    .await;
                Some(match answer {
                    Ok(body) => call_answer(&body).unwrap_or_else(|| {
                        Err(Status::unavailable(format!(
                            "node {node}'s answer was unreadable"
                        )))
                    }),
                    Err(error) => Err(Status::unavailable(format!(
                        "call {call_id} is on node {node}: {error}"
                    ))),
                })
            }
            Ok(Owner::Lost(node)) => Some(Err(Status::not_found(format!(
                "call {call_id} was on node {node}, which is lost"
            )))),
            Ok(Owner::Here | Owner::Unknown | Owner::Ended) => None,
            Err(error) => Some(Err(Status::unavailable(format!(
                "the cluster's store cannot be read: {error}"
            )))),
        }
    }

    /// This node's answer to another node's `GetCall`: `0` and the response, or `1` (not
    /// found) or `2` (not the platform's) and the message.
    fn local_call(&self, platform: &str, request: &pb::GetCallRequest) -> Vec<u8> {
        match self.registry.get(&request.call_id, platform) {
            Ok(snapshot) => {
                let mut body = vec![0];
                body.extend(
                    pb::GetCallResponse {
                        call: Some(convert::call(&snapshot)),
                    }
                    .encode_to_vec(),
                );
                body
            }
            Err(error) => {
                let mut body = vec![if error.code == ErrorCode::NotPermitted {
                    2
                } else {
                    1
                }];
                body.extend(error.message.into_bytes());
                body
            }
        }
    }

    /// This node's calls in progress that involve `platform`, after `after`, at most `size`;
    /// and whether more follow.
    pub(super) fn local_calls(
        &self,
        platform: &str,
        after: Option<&Position>,
        size: usize,
    ) -> (Vec<(Position, pb::Call)>, bool) {
        let (snapshots, more) = self.registry.list(platform, after, size);
        let calls = snapshots
            .iter()
            .map(|snapshot| {
                (
                    (snapshot.started_at, snapshot.call_id.clone()),
                    convert::call(snapshot),
                )
            })
            .collect();
        (calls, more)
    }

    /// `local` and the other nodes' pages for `request`, merged in order; and whether any
    /// node had more.
    ///
    /// # Errors
    /// UNAVAILABLE when a live node does not answer (the list would be incomplete).
    pub(super) async fn calls_elsewhere(
        &self,
        platform: &str,
        request: &pb::ListActiveCallsRequest,
        mut local: Vec<(Position, pb::Call)>,
    ) -> Result<(Vec<(Position, pb::Call)>, bool), Status> {
        let Some(store) = self.shared_store() else {
            return Ok((local, false));
        };
        let nodes = store
            .other_nodes()
            .await
            .map_err(|error| Status::unavailable(format!("the cluster's store: {error}")))?;
        let mut more = false;
        for node in nodes {
            let answer = store
                .forward(
                    &node,
                    RequestKind::ListActiveCalls,
                    platform,
                    request.encode_to_vec(),
                )
                .await
                .map_err(|error| {
                    Status::unavailable(format!("node {node}'s calls are not listed: {error}"))
                })?;
            let page = pb::ListActiveCallsResponse::decode(&*answer)
                .map_err(|_| Status::unavailable(format!("node {node}'s list was unreadable")))?;
            more |= !page.next_page_token.is_empty();
            for call in page.calls {
                let started = call
                    .started_at
                    .as_ref()
                    .map_or(0, |t| convert::unix_ms(Some(t)));
                local.push(((started, call.call_id.clone()), call));
            }
        }
        local.sort_by(|x, y| x.0.cmp(&y.0));
        Ok((local, more))
    }

    /// Answers, for as long as the store runs, what the other nodes forward to this one: a
    /// command is carried out here as if its client were connected here, a list is this
    /// node's own.
    pub async fn answer_forwarded(self, store: Store) {
        let Some(mut requests) = store.forwarded_requests() else {
            return;
        };
        loop {
            let request = tokio::select! {
                request = requests.recv() => request,
                _ = self.stop.cancelled() => None,
            };
            let Some(request) = request else { return };
            let (service, store) = (self.clone(), store.clone());
            tokio::spawn(async move {
                let answer = match request.kind {
                    RequestKind::Command => match pb::Command::decode(&*request.body) {
                        Ok(command) => service
                            .handle_command(&request.platform, command)
                            .await
                            .encode_to_vec(),
                        Err(_) => result_of(
                            "",
                            Err(CommandError::new(
                                ErrorCode::Invalid,
                                "a forwarded command was unreadable",
                            )),
                        )
                        .encode_to_vec(),
                    },
                    RequestKind::GetCall => {
                        let request_body =
                            pb::GetCallRequest::decode(&*request.body).unwrap_or_default();
                        service.local_call(&request.platform, &request_body)
                    }
                    RequestKind::ListActiveCalls => {
                        let request_body =
                            pb::ListActiveCallsRequest::decode(&*request.body).unwrap_or_default();
                        service
                            .local_page(&request.platform, &request_body)
                            .encode_to_vec()
                    }
                };
                if let Err(error) = store.answer(&request.key, answer).await {
                    tracing::error!(%error, key = %request.key, "forwarded request not answered");
                }
            });
        }
    }
}
