//! A relay worker: the epoll loop over its calls' sockets and the only media I/O. It receives
//! a datagram, hands it to the call's [`CallMedia`] and performs the [`PacketOutcome`]
//! (sends, counts); applies each [`Control`] and [`MediaCommand`] with a method of its own;
//! and runs one timer for everything generated (playbacks and mixing, whichever is due first,
//! [`CallMedia::poll_timeout`]).

use std::collections::HashMap;
use std::net::UdpSocket;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as control;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::event::{epoll, Timespec};
use tokio::sync::mpsc;

use super::call_media::{CallMedia, PacketOutcome, Socket, Tally, Transmit};
use super::{Control, MediaEvent, NewParty, RelayStats};
use crate::media::ports::LegSockets;
use crate::media::srtp::{SrtpError, MAX_OVERHEAD};
use crate::media::{MediaCommand, Party, MAX_PARTIES};
use crate::metrics::Metrics;

/// The epoll data of the waker (socket data is slot * [`SOCKETS_PER_CALL`] + party * 2 + 0 for
/// RTP, 1 for RTCP).
pub(super) const WAKER: u64 = u64::MAX;
const SOCKETS_PER_CALL: u64 = 2 * MAX_PARTIES as u64;

const TICK: Duration = Duration::from_millis(1);

/// Above this many packets per millisecond (measured over [`RATE_WINDOW`]) a worker batches:
/// below it, waking per packet costs less than the fixed cost of ticking 1,000 times a second
/// (measured: 50 calls cost 7 % of a core event-driven, 15 % ticking).
const BATCH_PACKETS_PER_MS: u64 = 5;
const RATE_WINDOW: Duration = Duration::from_millis(20);

/// The largest datagram relayed.
const DATAGRAM: usize = 2048;

/// One call on a worker: per party its RTP and RTCP sockets, then the port leases, which are
/// released after the sockets close (fields drop in order), and the call's media state.
pub(super) struct Call {
    id: u64,
    /// None where a party was given back ([`super::RelayHandle::remove_party`]).
    sockets: Vec<Option<[UdpSocket; 2]>>,
    leases: Vec<Option<LegSockets>>,
    media: CallMedia,
    stats: Arc<RelayStats>,
    events: mpsc::UnboundedSender<MediaEvent>,
}

impl Call {
    /// Legs A and B's sockets (RTP, RTCP each) and leases, and their media state.
    pub(super) fn new(
        id: u64,
        sockets: [[UdpSocket; 2]; 2],
        leases: [LegSockets; 2],
        media: CallMedia,
        (stats, events): (Arc<RelayStats>, mpsc::UnboundedSender<MediaEvent>),
    ) -> Call {
        Call {
            id,
            sockets: sockets.into_iter().map(Some).collect(),
            leases: leases.into_iter().map(Some).collect(),
            media,
            stats,
            events,
        }
    }

    /// Tells the call a digit began, unless it has [`super::MAX_PENDING_DIGITS`] unread.
    fn report_digit(&self, from: Party, digit: char) {
        if !self.stats.pending_digits.admit() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if self.events.send(MediaEvent::Digit(from, digit)).is_err() {
            self.stats.pending_digits.read();
        }
    }

    /// Whether `party` has its sockets.
    fn has_sockets(&self, party: usize) -> bool {
        self.sockets.get(party).is_some_and(Option::is_some)
    }

    /// Connects or disconnects `party`'s RTP socket so that it is connected exactly while a
    /// source is latched and heard from ([`CallMedia::wanted_connection`]).
    fn follow_latch(&mut self, party: usize, now: Instant) {
        let (Some(wanted), Some(Some(sockets))) = (
            self.media.wanted_connection(party, now),
            self.sockets.get(party),
        ) else {
            return;
        };
        let done = match wanted {
            Some(source) => sockets[0].connect(source).is_ok(),
            None => rustix::net::connect_unspec(&sockets[0]).is_ok(),
        };
        if done {
            self.media.connected(party, wanted);
        }
    }

    /// Applies one command of the call model.
    fn command(&mut self, command: MediaCommand, now: Instant, room: &mut Room, tally: &mut Tally) {
        if let Some(party) = command_party(&command) {
            if !self.has_sockets(party.index()) {
                return;
            }
        }
        match command {
            MediaCommand::Configure(party, media) => self.configure(party, media, false, now),
            MediaCommand::Replace(party, media) => self.configure(party, media, true, now),
            MediaCommand::Answered => self.media.answered(now),
            MediaCommand::DetectDigits(party, on) => self.media.detect_digits(party, on),
            MediaCommand::SendDigit(party, digit) => {
                let Call { sockets, media, .. } = self;
                let mut send = sender(sockets);
                media.send_digit(party, digit, now, &mut room.protected, &mut send, tally);
            }
            MediaCommand::Announce(party, announcement) => {
                self.media.announce(party, announcement.as_ref(), now)
            }
            MediaCommand::Join(party) => self.media.join(party, true, now),
            MediaCommand::Leave(party) => self.media.join(party, false, now),
            MediaCommand::Mute(party, on) => self.media.mute(party, on),
            MediaCommand::Isolate(party, on) => self.media.isolate(party, on),
            MediaCommand::Record(sink) => self.media.record(sink),
        }
    }

    fn configure(
        &mut self,
        party: Party,
        media: crate::media::LegMedia,
        replace: bool,
        now: Instant,
    ) {
        self.media.configure(party, media, replace, now);
        self.follow_latch(party.index(), now);
    }

    /// Sends the generated packets due by `now`: when the next is due, or None once there is
    /// none to come.
    fn handle_timeout(
        &mut self,
        now: Instant,
        room: &mut Room,
        tally: &mut Tally,
    ) -> Option<Instant> {
        let Call { sockets, media, .. } = self;
        let mut send = sender(sockets);
        media.handle_timeout(now, &mut room.protected, &mut send, tally);
        media.poll_timeout()
    }

    /// Reads one datagram from a socket epoll reported readable and performs what the call's
    /// media makes of it. A socket holding more is reported again by the next wait.
    fn receive(&mut self, index: usize, room: &mut Room, now: Instant, tally: &mut Tally) {
        let (party, socket) = (
            index / 2,
            if index % 2 == 0 {
                Socket::Rtp
            } else {
                Socket::Rtcp
            },
        );
        let Some(Some(sockets)) = self.sockets.get(party) else {
            return;
        };
        let (length, source) = match sockets[socket.index()].recv_from(&mut room.packet) {
            Ok(received) => received,
            // WouldBlock (spurious report), or an ICMP error from a gone peer, which the read
            // has now cleared.
            Err(_) => return,
        };
        let Some(from) = Party::from_index(party) else {
            return;
        };
        let Room { packet, protected } = room;
        let Some(packet) = packet.get_mut(..length) else {
            return;
        };
        let outcome = self
            .media
            .on_packet(now, party, socket, source, packet, protected);
        match outcome {
            PacketOutcome::Send(transmit, payload) => {
                let sent = perform(&self.sockets, &transmit, payload.bytes(packet, protected));
                match socket {
                    Socket::Rtp if sent => count(&self.stats, tally, from, Counted::Relayed),
                    Socket::Rtp => count(&self.stats, tally, from, Counted::Dropped),
                    Socket::Rtcp if sent => tally.rtcp += 1,
                    Socket::Rtcp => {}
                }
            }
            PacketOutcome::Dropped if socket == Socket::Rtp => {
                count(&self.stats, tally, from, Counted::Dropped);
            }
            PacketOutcome::SrtpRejected { error, rtp } => {
                if error != SrtpError::TooShort {
                    tally.srtp_rejected += 1;
                }
                if rtp {
                    count(&self.stats, tally, from, Counted::Dropped);
                }
            }
            PacketOutcome::Unpaired => tally.dropped += 1,
            PacketOutcome::Mixed => count(&self.stats, tally, from, Counted::Relayed),
            PacketOutcome::Late => tally.jitter_dropped += 1,
            PacketOutcome::Digit(from, digit) => self.report_digit(from, digit),
            PacketOutcome::Dropped | PacketOutcome::Consumed | PacketOutcome::Ignored => {}
        }
        if socket == Socket::Rtp && outcome.passed_latch_check() {
            self.follow_latch(party, now);
        }
    }
}

/// The worker's packet buffers, reused for every packet: what was received (rewritten in
/// place), and room for SRTP to protect a packet into.
struct Room {
    packet: [u8; DATAGRAM],
    protected: [u8; DATAGRAM + MAX_OVERHEAD],
}

/// Sends `bytes` as `transmit` says, from the call's socket: whether they went out.
fn perform(sockets: &[Option<[UdpSocket; 2]>], transmit: &Transmit, bytes: &[u8]) -> bool {
    match sockets.get(transmit.party) {
        Some(Some(pair)) => send(&pair[transmit.socket.index()], bytes, transmit),
        _ => false,
    }
}

/// What the call's generated packets go out with: [`perform`] on its sockets.
fn sender(sockets: &[Option<[UdpSocket; 2]>]) -> impl FnMut(&Transmit, &[u8]) -> bool + '_ {
    move |transmit, bytes| perform(sockets, transmit, bytes)
}

/// One worker's state: its calls in slots, their ids, and the calls with generated packets.
struct Worker<'a> {
    poll: &'a OwnedFd,
    slots: Vec<Option<Call>>,
    free: Vec<usize>,
    by_id: HashMap<u64, usize>,
    room: Box<Room>,
    tally: Tally,
    /// Calls playing to a party or mixing a conference, and when the next of their packets is
    /// due.
    scheduled: Vec<u64>,
    next_due: Option<Instant>,
}

/// One worker: its calls in slots; epoll data = slot * [`SOCKETS_PER_CALL`] + party * 2 + 0 for
/// RTP, 1 for RTCP.
pub(super) fn worker(
    poll: &OwnedFd,
    waker: &OwnedFd,
    queue: &control::Receiver<Control>,
    stop: &AtomicBool,
    metrics: &Metrics,
) -> std::io::Result<()> {
    let mut events: Vec<epoll::Event> = Vec::with_capacity(4096);
    let mut worker = Worker {
        poll,
        slots: Vec::new(),
        free: Vec::new(),
        by_id: HashMap::new(),
        room: Box::new(Room {
            packet: [0; DATAGRAM],
            protected: [0; DATAGRAM + MAX_OVERHEAD],
        }),
        tally: Tally::default(),
        scheduled: Vec::new(),
        next_due: None,
    };
    let mut last_housekeeping = Instant::now();
    let mut batch_mode = false;
    let (mut window_start, mut window_packets) = (Instant::now(), 0u64);
    while !stop.load(Ordering::Relaxed) {
        let tick_start = Instant::now();
        // Batch mode: collect what arrived during the sleep. Otherwise wait for the first
        // packet, a control message (the waker) or the next housekeeping.
        let wait = if batch_mode {
            Duration::ZERO
        } else {
            let housekeeping = Duration::from_secs(1).saturating_sub(last_housekeeping.elapsed());
            worker
                .next_due
                .map(|at| at.saturating_duration_since(Instant::now()))
                .map_or(housekeeping, |due| due.min(housekeeping))
        };
        let timeout = Timespec {
            tv_sec: wait.as_secs() as _,
            tv_nsec: wait.subsec_nanos().into(),
        };
        events.clear();
        match epoll::wait(
            poll,
            rustix::buffer::spare_capacity(&mut events),
            Some(&timeout),
        ) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(error) => return Err(error.into()),
        }
        // Controls after the wait and before the packets: a command enqueued before a packet
        // was sent (a hold's Configure, then the 200 OK, then RTP) takes effect first.
        loop {
            match queue.try_recv() {
                Ok(control) => worker.control(control),
                Err(control::TryRecvError::Empty) => break,
                Err(control::TryRecvError::Disconnected) => return Ok(()),
            }
        }
        let now = Instant::now();
        let before = worker.tally.relayed + worker.tally.dropped + worker.tally.rtcp;
        for event in &events {
            let data = event.data.u64();
            if data == WAKER {
                // Level-triggered: reset the counter or it is reported on every wait.
                let _ = rustix::io::read(waker, &mut [0u8; 8]);
                continue;
            }
            worker.receive(data, now);
        }
        worker.run_timers(now);
        let tally = &worker.tally;
        window_packets += tally.relayed + tally.dropped + tally.rtcp - before;
        let window = now.duration_since(window_start);
        if window >= RATE_WINDOW {
            batch_mode = window_packets >= BATCH_PACKETS_PER_MS * window.as_millis() as u64;
            (window_start, window_packets) = (now, 0);
        }
        if now.duration_since(last_housekeeping) >= Duration::from_secs(1) {
            last_housekeeping = now;
            worker.housekeeping(now, metrics);
        }
        // Under load, sleep out the rest of the tick so the next wake-up collects many packets.
        if batch_mode {
            if let Some(rest) = TICK.checked_sub(tick_start.elapsed()) {
                std::thread::sleep(rest);
            }
        }
    }
    worker.tally.flush(metrics);
    Ok(())
}

impl Worker<'_> {
    fn call_mut(&mut self, id: u64) -> Option<&mut Call> {
        let slot = *self.by_id.get(&id)?;
        self.slots.get_mut(slot)?.as_mut()
    }

    /// Applies one message from the worker's queue.
    fn control(&mut self, control: Control) {
        match control {
            Control::Ping(reply) => {
                if crate::faults::injected(crate::faults::Fault::RelayPanic) {
                    panic!("injected fault: a relay worker panics");
                }
                let _ = reply.send(());
            }
            Control::Add(call) => self.add_call(*call),
            Control::AddParty(id, new) => self.add_party(id, *new),
            Control::RemoveParty(id, party) => self.remove_party(id, party),
            Control::Command(id, command) => self.command(id, command),
            Control::Remove(id) => self.remove_call(id),
        }
    }

    fn add_call(&mut self, mut call: Call) {
        let slot = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        let mut registered = true;
        for (party, pair) in call.sockets.iter().enumerate() {
            if let Some(pair) = pair {
                registered &= register(self.poll, slot, party, pair);
            }
        }
        if !registered {
            tracing::error!("cannot register media sockets; call has no media");
        }
        call.media.started(Instant::now());
        self.by_id.insert(call.id, slot);
        self.slots[slot] = Some(call);
    }

    fn add_party(&mut self, id: u64, new: NewParty) {
        let Some(&slot) = self.by_id.get(&id) else {
            return;
        };
        let poll = self.poll;
        let Some(call) = self.slots[slot].as_mut() else {
            return;
        };
        // A new party is the next socket pair, or one given back earlier.
        let index = new.party.index();
        let reused = call.sockets.get(index).is_some_and(Option::is_none);
        if !reused && index != call.sockets.len() {
            return;
        }
        if !register(poll, slot, index, &new.sockets) {
            tracing::error!("cannot register a guest's media sockets");
        }
        let NewParty { sockets, lease, .. } = new;
        if reused {
            call.sockets[index] = Some(sockets);
            call.leases[index] = Some(lease);
        } else {
            call.sockets.push(Some(sockets));
            call.leases.push(Some(lease));
        }
        call.media.add_party(index, Instant::now());
    }

    fn remove_party(&mut self, id: u64, party: Party) {
        let poll = self.poll;
        let Some(call) = self.call_mut(id) else {
            return;
        };
        let index = party.index();
        if let Some(pair) = call.sockets.get_mut(index).and_then(Option::take) {
            for socket in &pair {
                let _ = epoll::delete(poll, socket.as_fd());
            }
        }
        // The ports go back to the pool once both descriptors are closed.
        if let Some(lease) = call.leases.get_mut(index) {
            *lease = None;
        }
        call.media.remove_party(index, Instant::now());
    }

    fn command(&mut self, id: u64, command: MediaCommand) {
        let now = Instant::now();
        let Worker {
            slots,
            by_id,
            room,
            tally,
            scheduled,
            ..
        } = self;
        let Some(call) = by_id.get(&id).and_then(|slot| slots[*slot].as_mut()) else {
            return;
        };
        call.command(command, now, room, tally);
        // Ringback or mixing may have begun: the next round of timers takes the call on.
        if call.media.poll_timeout().is_some() && !scheduled.contains(&id) {
            scheduled.push(id);
        }
    }

    fn remove_call(&mut self, id: u64) {
        if let Some(slot) = self.by_id.remove(&id) {
            if let Some(call) = self.slots[slot].take() {
                // Explicitly: the leases hold other descriptors of the same sockets, which
                // would keep them in the set after ours close.
                for socket in call.sockets.iter().flatten().flatten() {
                    let _ = epoll::delete(self.poll, socket.as_fd());
                }
            }
            self.free.push(slot);
        }
    }

    /// A socket epoll reported readable, by its epoll data.
    fn receive(&mut self, data: u64, now: Instant) {
        let (slot, index) = (
            (data / SOCKETS_PER_CALL) as usize,
            (data % SOCKETS_PER_CALL) as usize,
        );
        let Some(Some(call)) = self.slots.get_mut(slot) else {
            return;
        };
        call.receive(index, &mut self.room, now, &mut self.tally);
    }

    /// Generated packets (playbacks, mixing) for the few calls that have them; the next due
    /// time of any.
    fn run_timers(&mut self, now: Instant) {
        let Worker {
            slots,
            by_id,
            room,
            tally,
            scheduled,
            next_due,
            ..
        } = self;
        *next_due = None;
        scheduled.retain(|id| {
            let Some(call) = by_id.get(id).and_then(|slot| slots[*slot].as_mut()) else {
                return false;
            };
            match call.handle_timeout(now, room, tally) {
                Some(at) => {
                    *next_due = Some(next_due.map_or(at, |n: Instant| n.min(at)));
                    true
                }
                None => false,
            }
        });
    }

    /// Once a second: the counts to the metrics, the latches' connections, inactivity.
    fn housekeeping(&mut self, now: Instant, metrics: &Metrics) {
        self.tally.flush(metrics);
        for call in self.slots.iter_mut().flatten() {
            for party in 0..call.sockets.len() {
                if call.has_sockets(party) {
                    call.follow_latch(party, now);
                }
            }
            if call.media.poll_inactive(now) {
                let _ = call.events.send(MediaEvent::Inactive);
            }
        }
    }
}

/// Registers a party's RTP and RTCP sockets with the worker's epoll set.
fn register(poll: &OwnedFd, slot: usize, party: usize, sockets: &[UdpSocket; 2]) -> bool {
    let mut registered = true;
    for (kind, socket) in sockets.iter().enumerate() {
        let data = slot as u64 * SOCKETS_PER_CALL + (party * 2 + kind) as u64;
        registered &= socket.set_nonblocking(true).is_ok()
            && epoll::add(
                poll,
                socket,
                epoll::EventData::new_u64(data),
                epoll::EventFlags::IN,
            )
            .is_ok();
    }
    registered
}

/// The party a command addresses, if any.
fn command_party(command: &MediaCommand) -> Option<Party> {
    match command {
        MediaCommand::Configure(party, _)
        | MediaCommand::Replace(party, _)
        | MediaCommand::DetectDigits(party, _)
        | MediaCommand::SendDigit(party, _)
        | MediaCommand::Announce(party, _)
        | MediaCommand::Join(party)
        | MediaCommand::Leave(party)
        | MediaCommand::Mute(party, _)
        | MediaCommand::Isolate(party, _) => Some(*party),
        MediaCommand::Answered | MediaCommand::Record(_) => None,
    }
}

/// How an RTP packet counts in the call's stats.
enum Counted {
    Relayed,
    Dropped,
}

fn count(stats: &RelayStats, tally: &mut Tally, from: Party, counted: Counted) {
    match counted {
        Counted::Relayed => {
            tally.relayed += 1;
            let counter = if from == Party::A {
                &stats.a_to_b
            } else {
                &stats.b_to_a
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        Counted::Dropped => {
            tally.dropped += 1;
            stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Sends one packet as `transmit` says: with `send` when the socket is connected to its
/// destination (the kernel's cached route, see [`CallMedia::wanted_connection`]), else with
/// `send_to`.
fn send(socket: &UdpSocket, packet: &[u8], transmit: &Transmit) -> bool {
    let sent = if transmit.connected {
        socket.send(packet)
    } else {
        socket.send_to(packet, transmit.destination)
    };
    // A full socket buffer drops the packet, as the network would; never wait on media.
    sent.is_ok()
}
