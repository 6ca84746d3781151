//! The RTP/RTCP relay: worker threads that own the media sockets of the calls assigned to them.
//!
//! The map:
//! - this file, the public face: [`MediaEngine`] (the workers), [`RelayHandle`] (a call's
//!   handle: commands in, [`MediaEvent`]s out, [`RelayStats`]), [`MediaProbe`] (`/healthz`);
//! - `worker`: the epoll loop and the socket I/O, nothing else: receive, perform what the
//!   call's media state says, apply each command, one timer for playbacks and mixing;
//! - `call_media`: one call's media state, sans-IO (`on_packet(now, ...) -> PacketOutcome`):
//!   its parties' sides (latching, payload types, transcoding, digits), relaying or mixing
//!   (`call_media/conference`);
//! - `dtmf` (RFC 4733 events), `playback` (the ringback tone or an announcement, and its pacing), `srtp_session` (a leg's
//!   SRTP contexts across key changes).
//!
//! Per packet (no allocation, no lock shared between calls): receive on leg X, latch X's real
//! source (symmetric RTP, for NAT), demultiplex RTP from RTCP (RFC 5761 §4), map the payload type
//! to leg Y's (codec, RFC 4733 telephone-event), transcode PCMU<->PCMA if the legs negotiated
//! different codecs, rewrite SSRC/sequence/timestamp so Y always sees one continuous stream of
//! ours, and send it from leg Y's socket (the address Y was given in SDP) to Y's latched or
//! signalled address.
//!
//! Why worker threads and not a task per call: a packet every 12 us spread over 1,600 sockets
//! means one wake-up, one context switch and one scheduler round per packet, which cost more
//! than the relaying (measured: ~10 us per packet that way). Each worker owns its calls'
//! sockets in one level-triggered epoll set and works in two modes: under load it sleeps out the
//! rest of a 1 ms tick and then reads every socket that became readable (tens of packets per
//! wake-up, at most 1 ms of added latency); below five packets per millisecond it waits in epoll
//! instead, so a lightly loaded or idle gateway does not tick at all.
//!
//! Conferences: with three or more parties in a call's audio ([`MediaCommand::Join`]) the worker
//! stops relaying for that call and mixes instead: each party's RTP goes into its jitter buffer
//! ([`super::mixer`]), and every 20 ms the worker takes one frame from each, mixes N-1 and sends
//! each party its frame, encoded in its codec, stamped into the same continuous stream (SSRC,
//! sequence numbers, timestamps) it had while relayed. Back to two parties, relaying resumes in
//! that stream.
//!
//! SRTP (RFC 3711): a leg whose SDP carried keys has its own contexts; what it sends is
//! authenticated (a packet that fails is dropped before it can latch anything) and decrypted
//! on arrival, and everything we send it, relayed, mixed or generated, is protected last,
//! after the rewriting. So a call can be SRTP on one leg and plain on the other.
//!
//! Why level-triggered: at 50 packets/s a stream's socket holds one datagram per tick. An
//! edge-triggered set must read each socket until `EAGAIN`, a second system call per packet;
//! level-triggered, one read per reported socket per tick is enough (a socket still holding
//! data is simply reported again on the next wait).

mod call_media;
mod dtmf;
mod playback;
mod srtp_session;
mod worker;

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc as control;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::event::{epoll, eventfd, EventfdFlags};
use tokio::sync::mpsc;

use super::ports::LegSockets;
use super::{MediaCommand, Party};
use crate::ids::IdGenerator;
use crate::metrics::Metrics;
use call_media::CallMedia;
use worker::{worker, Call, WAKER};

/// 20 ms: one packet of a playback, one tick of the mixer.
const PACKET_TIME: Duration = Duration::from_millis(20);

/// Packet counts of one call, readable while it runs.
#[derive(Debug, Default)]
pub struct RelayStats {
    pub a_to_b: AtomicU64,
    pub b_to_a: AtomicU64,
    pub dropped: AtomicU64,
    /// Digits sent to the call and not yet read: a party flooding RFC 4733 events fills at most
    /// [`MAX_PENDING_DIGITS`], the rest are dropped.
    pending_digits: PendingDigits,
}

/// Digits sent to a call and not yet read.
#[derive(Debug, Default)]
struct PendingDigits(AtomicUsize);

impl PendingDigits {
    /// Whether one more may be sent ([`MAX_PENDING_DIGITS`] at most unread); counts it if so.
    fn admit(&self) -> bool {
        if self.0.fetch_add(1, Ordering::Relaxed) >= MAX_PENDING_DIGITS {
            self.0.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// One was read (or could not be sent).
    fn read(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Digits a call may have waiting (a person keys a few a second; the call task reads them in
/// microseconds).
pub const MAX_PENDING_DIGITS: usize = 64;

/// What the relay tells its call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaEvent {
    /// No RTP or RTCP on either leg for the inactivity timeout.
    Inactive,
    /// An RFC 4733 event began from a party that detects digits, or from any party of a
    /// conference (reported once per event).
    Digit(Party, char),
}

/// A worker's control queue and the eventfd that interrupts its epoll wait.
#[derive(Clone)]
struct WorkerQueue {
    sender: control::Sender<Control>,
    waker: Arc<OwnedFd>,
}

impl WorkerQueue {
    fn send(&self, control: Control) {
        if self.sender.send(control).is_ok() {
            wake(&self.waker);
        }
    }
}

fn wake(eventfd: &OwnedFd) {
    // Only fails when the counter is saturated, and then the worker is awake anyway.
    let _ = rustix::io::write(eventfd, &1u64.to_ne_bytes());
}

/// The call's handle on its relay. Dropping it stops the relay and frees the ports.
pub struct RelayHandle {
    id: u64,
    control: WorkerQueue,
    events: mpsc::UnboundedReceiver<MediaEvent>,
    stats: Arc<RelayStats>,
    addresses: [SocketAddr; 2],
    /// Parties the relay holds (legs A and B, then guests added).
    parties: AtomicUsize,
    /// Parties given back, to be used again before new ones.
    returned: std::sync::Mutex<Vec<Party>>,
}

impl RelayHandle {
    pub fn command(&self, command: MediaCommand) {
        self.control.send(Control::Command(self.id, command));
    }

    /// Waits for the next relay event (pending forever once the relay has stopped).
    pub async fn event(&mut self) -> MediaEvent {
        match self.events.recv().await {
            Some(event) => {
                if matches!(event, MediaEvent::Digit(..)) {
                    self.stats.pending_digits.read();
                }
                event
            }
            None => std::future::pending().await,
        }
    }

    pub fn stats(&self) -> &RelayStats {
        &self.stats
    }

    /// The local RTP address of `leg` (what SDP advertises).
    pub fn address(&self, leg: super::Leg) -> SocketAddr {
        self.addresses[leg.index()]
    }

    /// Adds a conference guest's port pair to the call's media; returns its party and RTP
    /// address, or None when the call holds [`super::MAX_PARTIES`] already or the sockets cannot be
    /// duplicated.
    pub fn add_party(&self, lease: LegSockets) -> Option<(Party, SocketAddr)> {
        let (Ok(rtp), Ok(rtcp)) = (lease.rtp.try_clone(), lease.rtcp.try_clone()) else {
            return None;
        };
        let returned = self
            .returned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop();
        let party = match returned {
            Some(party) => party,
            None => {
                let index = self.parties.load(Ordering::Relaxed);
                let party = Party::guest(index.checked_sub(2)?)?;
                self.parties.store(index + 1, Ordering::Relaxed);
                party
            }
        };
        let address = lease.rtp_address();
        self.control.send(Control::AddParty(
            self.id,
            Box::new(NewParty {
                party,
                sockets: [rtp, rtcp],
                lease,
            }),
        ));
        Some((party, address))
    }
}

impl RelayHandle {
    /// Gives a party's ports back (a guest that failed or left, a leg whose party left): the
    /// party number may be used again by [`RelayHandle::add_party`].
    pub fn remove_party(&self, party: Party) {
        self.control.send(Control::RemoveParty(self.id, party));
        self.returned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(party);
    }
}

/// A guest's sockets on their way to the worker.
struct NewParty {
    party: Party,
    sockets: [UdpSocket; 2],
    lease: LegSockets,
}

impl Drop for RelayHandle {
    fn drop(&mut self) {
        self.control.send(Control::Remove(self.id));
    }
}

/// What a worker is told, through its queue.
enum Control {
    /// Answered when the worker reads it: proof that its loop runs (`/healthz`).
    Ping(tokio::sync::oneshot::Sender<()>),
    Add(Box<Call>),
    AddParty(u64, Box<NewParty>),
    RemoveParty(u64, Party),
    Command(u64, MediaCommand),
    Remove(u64),
}

/// Asks each relay worker whether its loop runs.
#[derive(Clone)]
pub struct MediaProbe {
    workers: Vec<WorkerQueue>,
}

impl MediaProbe {
    /// The workers (by index) that did not answer within `within`: stuck, or stopped.
    pub async fn silent(&self, within: Duration) -> Vec<usize> {
        let answers: Vec<_> = self
            .workers
            .iter()
            .map(|worker| {
                let (reply, answer) = tokio::sync::oneshot::channel();
                worker.send(Control::Ping(reply));
                answer
            })
            .collect();
        // One deadline for all: k stuck workers cost `within`, not k times it.
        let deadline = tokio::time::Instant::now() + within;
        let mut silent = Vec::new();
        for (index, answer) in answers.into_iter().enumerate() {
            if !matches!(tokio::time::timeout_at(deadline, answer).await, Ok(Ok(()))) {
                silent.push(index);
            }
        }
        silent
    }
}

/// The relay workers.
pub struct MediaEngine {
    workers: Vec<WorkerQueue>,
    next_worker: AtomicUsize,
    next_id: AtomicU64,
    stop: Arc<AtomicBool>,
}

impl MediaEngine {
    /// Starts `threads` relay workers.
    ///
    /// # Errors
    /// The OS error if a worker thread cannot be started.
    pub fn start(threads: usize, metrics: Arc<Metrics>) -> std::io::Result<MediaEngine> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        for index in 0..threads.max(1) {
            let (sender, receiver) = control::channel();
            let poll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
            let waker = Arc::new(eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?);
            epoll::add(
                &poll,
                &*waker,
                epoll::EventData::new_u64(WAKER),
                epoll::EventFlags::IN,
            )?;
            let (stop, metrics, eventfd) =
                (Arc::clone(&stop), Arc::clone(&metrics), Arc::clone(&waker));
            std::thread::Builder::new()
                .name(format!("media-{index}"))
                .spawn(move || {
                    if let Err(error) = worker(&poll, &eventfd, &receiver, &stop, &metrics) {
                        tracing::error!(%error, "media worker stopped");
                    }
                })?;
            workers.push(WorkerQueue { sender, waker });
        }
        Ok(MediaEngine {
            workers,
            next_worker: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            stop,
        })
    }

    /// What `/healthz` asks the workers through.
    pub fn probe(&self) -> MediaProbe {
        MediaProbe {
            workers: self.workers.clone(),
        }
    }

    /// Hands a call's two legs to a worker and returns the call's handle.
    ///
    /// # Errors
    /// The OS error when the sockets cannot be duplicated for the worker (no descriptor
    /// left): the call must be refused, not carried without media; the legs go back.
    pub fn spawn(
        &self,
        legs: [LegSockets; 2],
        ids: IdGenerator,
        inactivity: Duration,
    ) -> std::io::Result<RelayHandle> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let worker = self.next_worker.fetch_add(1, Ordering::Relaxed) % self.workers.len();
        let control = self.workers[worker].clone();
        let (event_sender, events) = mpsc::unbounded_channel();
        let stats = Arc::new(RelayStats::default());
        let addresses = [legs[0].rtp_address(), legs[1].rtp_address()];
        let handle = RelayHandle {
            id,
            control: control.clone(),
            events,
            stats: Arc::clone(&stats),
            addresses,
            parties: AtomicUsize::new(2),
            returned: std::sync::Mutex::new(Vec::new()),
        };
        let clone = |s: &UdpSocket| s.try_clone();
        let sockets = [
            clone(&legs[0].rtp),
            clone(&legs[1].rtp),
            clone(&legs[0].rtcp),
            clone(&legs[1].rtcp),
        ];
        let [a_rtp, b_rtp, a_rtcp, b_rtcp] = sockets;
        let (a_rtp, b_rtp, a_rtcp, b_rtcp) = (a_rtp?, b_rtp?, a_rtcp?, b_rtcp?);
        let call = Call::new(
            id,
            [[a_rtp, a_rtcp], [b_rtp, b_rtcp]],
            legs,
            // The worker restarts its inactivity clock when it takes the call on.
            CallMedia::new(ids, inactivity, Instant::now()),
            (stats, event_sender),
        );
        control.send(Control::Add(Box::new(call)));
        Ok(handle)
    }
}

impl Drop for MediaEngine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for worker in &self.workers {
            wake(&worker.waker);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A party flooding RFC 4733 events fills its call's queue to MAX_PENDING_DIGITS and no
    /// further; each digit read makes room for one more.
    #[test]
    fn a_flood_of_digits_is_bounded() {
        let pending = PendingDigits::default();
        for _ in 0..MAX_PENDING_DIGITS {
            assert!(pending.admit());
        }
        assert!(!pending.admit());
        pending.read();
        assert!(pending.admit());
        assert!(!pending.admit());
    }
}
