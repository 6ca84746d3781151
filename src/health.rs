//! What `GET /healthz` answers: whether this gateway can take calls now, checked by a round
//! trip through each part that handles them, so a balancer or a supervisor hears the truth.
//!
//! A part that panics ends the process (the binary aborts on any panic, so systemd restarts it
//! and the next start closes the records left open); what this catches is a part that is alive
//! but stuck (a loop blocked, a writer hung on a dead disk) or a store that cannot write.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::media::relay::MediaProbe;
use crate::metrics::{Gauge, Metrics};
use crate::routing::Router;
use crate::sip::endpoint::EndpointHandle;
use crate::store::Store;

/// How long each part gets to answer (the loops answer in microseconds when well).
pub const ANSWER_WITHIN: Duration = Duration::from_secs(2);

/// A check the HTTP endpoint runs per `/healthz`: the problems found, none when healthy.
pub trait HealthCheck: Send + Sync + 'static {
    fn problems(&self) -> Pin<Box<dyn Future<Output = Vec<String>> + Send + '_>>;

    /// The peers found down by their probes. Listed, but no problem of this gateway's: a
    /// balancer must not take a node out because a desk behind it is dead.
    fn peers_down(&self) -> Vec<String> {
        Vec::new()
    }
}

/// The gateway's parts, asked in turn.
pub struct Health {
    pub shutdown: CancellationToken,
    pub endpoint: EndpointHandle,
    pub store: Store,
    pub media: MediaProbe,
    pub metrics: Arc<Metrics>,
    pub router: Arc<Router>,
}

impl Health {
    async fn check(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.shutdown.is_cancelled() {
            problems.push("shutting down".to_string());
        }
        let endpoint = tokio::time::timeout(ANSWER_WITHIN, self.endpoint.ping());
        let store = tokio::time::timeout(ANSWER_WITHIN, self.store.ping());
        let media = self.media.silent(ANSWER_WITHIN);
        let (endpoint, store, media) = tokio::join!(endpoint, store, media);
        if !matches!(endpoint, Ok(Ok(()))) {
            problems.push("SIP endpoint loop not answering".to_string());
        }
        match store {
            Ok(Ok(())) => {}
            Ok(Err(_)) => problems.push("store writer stopped".to_string()),
            Err(_) => problems.push("store writer not answering".to_string()),
        }
        if self.metrics.gauge(Gauge::StoreDegraded) > 0 {
            problems.push(format!(
                "store cannot write: {} records held in memory",
                self.metrics.gauge(Gauge::StoreHeldRecords)
            ));
        }
        for worker in media {
            problems.push(format!("media worker {worker} not answering"));
        }
        problems
    }
}

impl HealthCheck for Health {
    fn problems(&self) -> Pin<Box<dyn Future<Output = Vec<String>> + Send + '_>> {
        Box::pin(self.check())
    }

    fn peers_down(&self) -> Vec<String> {
        self.router
            .peers_down()
            .into_iter()
            .map(str::to_string)
            .collect()
    }
}
