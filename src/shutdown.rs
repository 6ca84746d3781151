//! SIGINT/SIGTERM -> one cancellation token that every part of the gateway watches, and the
//! order in which the gateway stops once it fires ([`Stopping::after`]): calls end first (BYE,
//! CANCEL/503, with a grace), then the endpoint and the sockets, the HTTP endpoint, the
//! work-order streams (they send what is committed, with a grace), and last the store is
//! flushed and its lock released.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::store::{Store, StoreLock};

/// How long calls get to end cleanly on shutdown before the store is flushed anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How long the work-order streams get to send what is committed when the gateway stops.
const GRPC_GRACE: Duration = Duration::from_secs(3);

/// What a running gateway stops, in the order [`Stopping::after`] stops it.
pub(crate) struct Stopping {
    /// The calls' tasks: closed and awaited first, so that their BYEs still go out.
    pub calls: TaskTracker,
    pub endpoint_stop: CancellationToken,
    pub transport_stop: CancellationToken,
    pub endpoint: JoinHandle<()>,
    pub http_stop: tokio::sync::watch::Sender<bool>,
    pub grpc_stop: CancellationToken,
    pub grpc: JoinHandle<()>,
    /// Flushed last: every step the calls and streams took before is committed.
    pub store: Store,
    /// The embedded store's claim (None for a shared store: the node's lease claims it).
    pub store_lock: Option<StoreLock>,
    /// The recorder and its writer thread: stopped once the calls have ended, so that every
    /// recording is completed.
    pub recorder: Option<(
        crate::media::recording::Recorder,
        std::thread::JoinHandle<()>,
    )>,
    /// `[cdr]`'s writer thread: stopped once the calls have ended, so that every ended
    /// call's line is written.
    pub cdr: Option<(crate::gateway::cdr::CdrFile, std::thread::JoinHandle<()>)>,
}

impl Stopping {
    /// Waits for `shutdown`, then stops everything in order.
    pub(crate) async fn after(self, shutdown: CancellationToken) {
        let Stopping {
            calls,
            endpoint_stop,
            transport_stop,
            endpoint,
            http_stop,
            grpc_stop,
            mut grpc,
            store,
            store_lock,
            recorder,
            cdr,
        } = self;
        shutdown.cancelled().await;
        tracing::info!("shutting down: ending calls");
        calls.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, calls.wait())
            .await
            .is_err()
        {
            tracing::warn!("calls still ending after the grace period; stopping anyway");
        }
        if let Some((recorder, writer)) = recorder {
            recorder.stop();
            let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        }
        if let Some((file, writer)) = cdr {
            let _ = tokio::task::spawn_blocking(move || {
                file.stop();
                writer.join()
            })
            .await;
        }
        endpoint_stop.cancel();
        transport_stop.cancel();
        let _ = endpoint.await;
        let _ = http_stop.send(true);
        grpc_stop.cancel();
        // The streams send what is committed and say the gateway is stopping; one whose client
        // does not read is cut off after the grace rather than holding the shutdown.
        if tokio::time::timeout(GRPC_GRACE, &mut grpc).await.is_err() {
            tracing::warn!(
                "work-order clients still connected after the grace period; closing them"
            );
            grpc.abort();
        }
        if let Err(error) = store.shutdown().await {
            tracing::error!(%error, "store not flushed cleanly");
        }
        drop(store_lock);
        tracing::info!("stopped");
    }
}

/// Cancels `token` on the first SIGINT or SIGTERM.
pub fn on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let interrupt = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut terminate = match tokio::signal::unix::signal(
                tokio::signal::unix::SignalKind::terminate(),
            ) {
                Ok(signal) => signal,
                Err(error) => {
                    tracing::error!(%error, "cannot watch SIGTERM; only SIGINT stops the gateway");
                    let _ = interrupt.await;
                    token.cancel();
                    return;
                }
            };
            tokio::select! {
                _ = interrupt => {}
                _ = terminate.recv() => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = interrupt.await;
        }
        token.cancel();
    });
}
