//! Requests for a call on another node of the cluster, passed through the shared database: the
//! node a platform's client is connected to writes the request in `forwarded` and notifies
//! `hotline_forward` (`"<node> <key>"`); the owner's cluster thread reads it and hands it to
//! its work-order service, whose answer is written back in the row and notified on
//! `hotline_answers` (`"<origin> <key>"`) to the waiting node. The bodies are the work-order
//! link's encoded messages: the store passes them on without reading them.
//!
//! No node-to-node connection and no second secret: the nodes trust what the database they
//! share holds. Rows whose answer never came (a node died meanwhile) are deleted after
//! [`STALE`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use postgres::Client;
use tokio::sync::{mpsc, oneshot};

use super::postgres::{self as pg, DatabaseUrl};
use super::StoreError;

pub(super) const FORWARD_CHANNEL: &str = "hotline_forward";
pub(super) const ANSWER_CHANNEL: &str = "hotline_answers";

/// How long a forwarded request waits for its answer (a command's own limit is 15 s).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);

/// Forwarded rows older than this are deleted (their origin stopped waiting long ago).
pub(super) const STALE: &str = "10 minutes";

/// What a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// A `Command` of the `Link` stream; the answer is its `CommandResult`.
    Command,
    /// A `ListActiveCallsRequest`; the answer is the node's `ListActiveCallsResponse`.
    ListActiveCalls,
    /// A `GetCallRequest`; the answer is the call, or why not (the work-order link's own
    /// encoding).
    GetCall,
}

impl RequestKind {
    fn as_str(self) -> &'static str {
        match self {
            RequestKind::Command => "command",
            RequestKind::ListActiveCalls => "list_active_calls",
            RequestKind::GetCall => "get_call",
        }
    }

    fn parse(text: &str) -> Option<RequestKind> {
        match text {
            "command" => Some(RequestKind::Command),
            "list_active_calls" => Some(RequestKind::ListActiveCalls),
            "get_call" => Some(RequestKind::GetCall),
            _ => None,
        }
    }
}

/// A request another node forwarded to this one.
#[derive(Debug)]
pub struct ForwardedRequest {
    /// What [`super::Store::answer`] answers.
    pub key: String,
    pub kind: RequestKind,
    /// The platform whose client sent it (authenticated by the origin).
    pub platform: String,
    pub body: Vec<u8>,
}

/// Where a call is carried, as the shared store knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// No record of the call.
    Unknown,
    /// The call has ended.
    Ended,
    /// This node.
    Here,
    /// Another node, alive.
    Node(String),
    /// Another node whose lease expired (its calls are being closed).
    Lost(String),
}

/// A forward's place among the waiting, given up when dropped.
struct Waiting {
    forwarding: Arc<Forwarding>,
    key: String,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.forwarding
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.key);
    }
}

impl Drop for Forwarding {
    /// The database client says goodbye by blocking on a runtime of its own, which a tokio
    /// worker (where the last store handle may go) must not do: there, it is said on a thread.
    fn drop(&mut self) {
        let client = self
            .connection
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(client) = client {
            super::reader::close_off_runtime(client);
        }
    }
}

/// What the store handle and the cluster thread share of the forwarding.
pub(super) struct Forwarding {
    pub(super) node: String,
    pub(super) url: DatabaseUrl,
    /// Requests sent, by key, waiting for their answer.
    pub(super) waiting: Mutex<HashMap<String, oneshot::Sender<Vec<u8>>>>,
    /// Requests for this node, towards its work-order service.
    pub(super) incoming: mpsc::Sender<ForwardedRequest>,
    pub(super) receiver: Mutex<Option<mpsc::Receiver<ForwardedRequest>>>,
    /// A connection for the requests and answers (the cluster thread's is its own).
    connection: Mutex<Option<Client>>,
    next: AtomicU64,
    incarnation: String,
}

impl Forwarding {
    pub(super) fn new(node: String, url: DatabaseUrl, incarnation: String) -> Forwarding {
        let (incoming, receiver) = mpsc::channel(1024);
        Forwarding {
            node,
            url,
            waiting: Mutex::new(HashMap::new()),
            incoming,
            receiver: Mutex::new(Some(receiver)),
            connection: Mutex::new(None),
            next: AtomicU64::new(1),
            incarnation,
        }
    }

    /// Removes `key` from the waiting when dropped: a forward whose caller gave up (a unary
    /// call past its deadline) leaves nothing behind.
    fn waiting_for(self: &Arc<Self>, key: String, answer: oneshot::Sender<Vec<u8>>) -> Waiting {
        self.waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key.clone(), answer);
        Waiting {
            forwarding: Arc::clone(self),
            key,
        }
    }

    /// Runs `work` on the forwarding connection (opened again if lost), in a blocking task.
    async fn with_connection<T: Send + 'static>(
        self: &Arc<Self>,
        work: impl FnOnce(&mut Client) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let mut connection = this
                .connection
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if connection.as_ref().is_none_or(Client::is_closed) {
                *connection = Some(this.url.connect()?);
            }
            let Some(client) = connection.as_mut() else {
                return Err(StoreError::Closed);
            };
            let result = work(client);
            if result.is_err() && client.is_closed() {
                *connection = None;
            }
            result
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }

    pub(super) async fn owner_of(self: &Arc<Self>, call_id: &str) -> Result<Owner, StoreError> {
        let call_id = call_id.to_string();
        let me = self.node.clone();
        self.with_connection(move |client| {
            let row = client.query_opt(
                "SELECT c.node, c.ended_at IS NOT NULL,
                        COALESCE(n.closed_at IS NULL AND n.expires_at > now(), false)
                 FROM calls c LEFT JOIN nodes n ON n.name = c.node WHERE c.id = $1",
                &[&call_id],
            )?;
            Ok(match row {
                None => Owner::Unknown,
                Some(row) => {
                    let (node, ended, alive): (String, bool, bool) =
                        (row.get(0), row.get(1), row.get(2));
                    if ended {
                        Owner::Ended
                    } else if node == me {
                        Owner::Here
                    } else if alive {
                        Owner::Node(node)
                    } else {
                        Owner::Lost(node)
                    }
                }
            })
        })
        .await
    }

    /// The other nodes whose lease is current.
    pub(super) async fn live_nodes(self: &Arc<Self>) -> Result<Vec<String>, StoreError> {
        let me = self.node.clone();
        self.with_connection(move |client| {
            Ok(client
                .query(
                    "SELECT name FROM nodes WHERE closed_at IS NULL AND expires_at > now()
                         AND name <> $1 ORDER BY name",
                    &[&me],
                )?
                .iter()
                .map(|row| row.get(0))
                .collect())
        })
        .await
    }

    pub(super) async fn forward(
        self: &Arc<Self>,
        node: &str,
        kind: RequestKind,
        platform: &str,
        body: Vec<u8>,
    ) -> Result<Vec<u8>, StoreError> {
        let key = format!(
            "{}-{}-{}",
            self.node,
            self.incarnation,
            self.next.fetch_add(1, Ordering::Relaxed)
        );
        let (answer, answered) = oneshot::channel();
        // Waiting before it is sent: the answer may come before the send returns.
        let _waiting = self.waiting_for(key.clone(), answer);
        let (target, origin, platform_name) =
            (node.to_string(), self.node.clone(), platform.to_string());
        let sent_key = key.clone();
        let sent = self
            .with_connection(move |client| {
                let mut transaction = client.transaction()?;
                transaction.execute(
                    "INSERT INTO forwarded (key, origin, target, kind, platform, body)
                     VALUES ($1, $2, $3, $4, $5, $6)",
                    &[
                        &sent_key,
                        &origin,
                        &target,
                        &kind.as_str(),
                        &platform_name,
                        &body,
                    ],
                )?;
                transaction.execute(
                    "SELECT pg_notify($1, $2)",
                    &[&FORWARD_CHANNEL, &format!("{target} {sent_key}")],
                )?;
                transaction.commit()?;
                Ok(())
            })
            .await;
        let outcome = match sent {
            Ok(()) => match tokio::time::timeout(ANSWER_TIMEOUT, answered).await {
                Ok(Ok(body)) => Ok(body),
                _ => Err(StoreError::NoAnswer {
                    node: node.to_string(),
                }),
            },
            Err(error) => Err(error),
        };
        outcome
    }

    pub(super) async fn answer(
        self: &Arc<Self>,
        key: &str,
        body: Vec<u8>,
    ) -> Result<(), StoreError> {
        let key = key.to_string();
        self.with_connection(move |client| {
            let mut transaction = client.transaction()?;
            let origin: Option<String> = transaction
                .query_opt(
                    "UPDATE forwarded SET answer = $2 WHERE key = $1 RETURNING origin",
                    &[&key, &body],
                )?
                .map(|row| row.get(0));
            if let Some(origin) = origin {
                transaction.execute(
                    "SELECT pg_notify($1, $2)",
                    &[&ANSWER_CHANNEL, &format!("{origin} {key}")],
                )?;
            }
            transaction.commit()?;
            Ok(())
        })
        .await
    }

    /// A `hotline_forward` notification (on the cluster thread): a request for this node is
    /// handed to the service.
    pub(super) fn take_request(&self, client: &mut Client, payload: &str) {
        let Some((target, key)) = payload.split_once(' ') else {
            return;
        };
        if target != self.node {
            return;
        }
        let row = match client.query_opt(
            "SELECT kind, platform, body FROM forwarded WHERE key = $1",
            &[&key],
        ) {
            Ok(row) => row,
            Err(error) => {
                tracing::error!(error = %pg::describe(&error), "forwarded request not read");
                return;
            }
        };
        let Some(row) = row else { return };
        let Some(kind) = RequestKind::parse(row.get(0)) else {
            return;
        };
        let request = ForwardedRequest {
            key: key.to_string(),
            kind,
            platform: row.get(1),
            body: row.get(2),
        };
        if self.incoming.try_send(request).is_err() {
            tracing::error!(%key, "forwarded request dropped: the work-order service is not taking them");
        }
    }

    /// A `hotline_answers` notification (on the cluster thread): the answer goes to whoever
    /// waits for it.
    pub(super) fn take_answer(&self, client: &mut Client, payload: &str) {
        let Some((origin, key)) = payload.split_once(' ') else {
            return;
        };
        if origin != self.node {
            return;
        }
        let answer: Option<Vec<u8>> = match client.query_opt(
            "DELETE FROM forwarded WHERE key = $1 RETURNING answer",
            &[&key],
        ) {
            Ok(row) => row.and_then(|row| row.get(0)),
            Err(error) => {
                tracing::error!(error = %pg::describe(&error), "forwarded answer not read");
                return;
            }
        };
        let waiting = self
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
        if let (Some(waiting), Some(answer)) = (waiting, answer) {
            let _ = waiting.send(answer);
        }
    }
}
