//! RTP/RTCP port pairs from `media.ports`: an even RTP port and the odd RTCP port above it
//! (RFC 3550 §11), bound when a leg is created and returned to the pool when it is dropped.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use std::net::UdpSocket;

use crate::limits::is_out_of_descriptors;
use crate::metrics::{Counter, Gauge, InterfaceMetrics, Metrics};
use std::sync::atomic::Ordering;

/// Why no port pair could be had: overload either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PortShortage {
    #[error("no media ports left (media.ports are all in use)")]
    NoPorts,
    #[error(
        "out of file descriptors for media sockets (raise LimitNOFILE or lower sip.max_calls)"
    )]
    NoDescriptors,
    #[error("the media ports left are kept for the reserved platforms' calls")]
    Reserved,
}

/// The free list of port pairs.
pub struct PortPool {
    address: IpAddr,
    /// Written in SDP instead of `address` (a side reached through NAT); else `address`.
    advertised: IpAddr,
    free: Mutex<VecDeque<u16>>,
    metrics: Arc<Metrics>,
    /// Its interface's figures (`hotline_interface_*`).
    figures: Arc<InterfaceMetrics>,
}

/// One leg's bound, non-blocking sockets (not yet registered with any poller: the relay worker
/// that serves the call registers them). Dropping it frees the pair.
pub struct LegSockets {
    pub rtp: UdpSocket,
    pub rtcp: UdpSocket,
    port: u16,
    pool: Arc<PortPool>,
}

impl LegSockets {
    /// The RTP address advertised in SDP.
    pub fn rtp_address(&self) -> SocketAddr {
        SocketAddr::new(self.pool.advertised, self.port)
    }
}

impl Drop for LegSockets {
    fn drop(&mut self) {
        self.pool.release(self.port);
    }
}

impl PortPool {
    /// Pairs from the inclusive range `[low, high]`, starting at the first even port.
    pub fn new(address: IpAddr, ports: [u16; 2], metrics: Arc<Metrics>) -> Arc<PortPool> {
        Self::on_interface("default", address, address, ports, metrics)
    }

    /// As [`PortPool::new`], for the interface `name`, its addresses written in SDP as
    /// `advertised`.
    pub fn on_interface(
        name: &str,
        address: IpAddr,
        advertised: IpAddr,
        [low, high]: [u16; 2],
        metrics: Arc<Metrics>,
    ) -> Arc<PortPool> {
        let first = low + (low % 2);
        let free = (first..high).step_by(2).collect();
        Arc::new(PortPool {
            address,
            advertised,
            free: Mutex::new(free),
            figures: metrics.interface(name),
            metrics,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<u16>> {
        // Each critical section is one push or pop: a poisoned lock holds a consistent list.
        self.free
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Pairs currently free.
    pub fn available(&self) -> usize {
        self.lock().len()
    }

    /// Binds the next free pair. Ports some other program holds are skipped (and retried
    /// later).
    ///
    /// # Errors
    /// [`PortShortage`] when no pair can be bound (the caller answers 503): every pair is in use
    /// or held elsewhere, or the process has no file descriptor left, which no other port
    /// would change.
    pub fn allocate(self: &Arc<Self>) -> Result<LegSockets, PortShortage> {
        self.allocate_leaving(0)
    }

    /// As [`PortPool::allocate`], but only while more than `kept` pairs are free (the
    /// reserved platforms' pairs).
    ///
    /// # Errors
    /// [`PortShortage::Reserved`] when only the kept pairs are left; else as `allocate`.
    pub fn allocate_leaving(self: &Arc<Self>, kept: usize) -> Result<LegSockets, PortShortage> {
        if kept > 0 && self.available() <= kept {
            return Err(PortShortage::Reserved);
        }
        let attempts = self.available();
        for _ in 0..attempts {
            let Some(port) = self.lock().pop_front() else {
                break;
            };
            match (bind(self.address, port), bind(self.address, port + 1)) {
                (Ok(rtp), Ok(rtcp)) => {
                    self.metrics.add_gauge(Gauge::MediaPortsInUse, 2);
                    self.figures.ports_in_use.fetch_add(2, Ordering::Relaxed);
                    self.figures.legs.fetch_add(1, Ordering::Relaxed);
                    return Ok(LegSockets {
                        rtp,
                        rtcp,
                        port,
                        pool: Arc::clone(self),
                    });
                }
                (Err(e), _) | (_, Err(e)) if is_out_of_descriptors(&e) => {
                    self.lock().push_front(port);
                    self.metrics.increment(Counter::DescriptorsExhausted);
                    return Err(PortShortage::NoDescriptors);
                }
                _ => {
                    tracing::debug!(port, "media port busy, skipping");
                    self.lock().push_back(port);
                }
            }
        }
        Err(PortShortage::NoPorts)
    }

    fn release(&self, port: u16) {
        self.metrics.add_gauge(Gauge::MediaPortsInUse, -2);
        self.figures.ports_in_use.fetch_sub(2, Ordering::Relaxed);
        // Reuse the least recently freed port last, so late packets of an ended call do not
        // reach the next call at once.
        self.lock().push_back(port);
    }
}

/// One pool per network interface, by the interface's index (the default's first): a leg's
/// sockets are bound on its peer's network, and its SDP advertises that address.
pub struct PortPools(Vec<Arc<PortPool>>);

impl PortPools {
    /// `default`'s pool, then the other interfaces' in order.
    pub fn new(default: Arc<PortPool>, more: impl IntoIterator<Item = Arc<PortPool>>) -> Arc<Self> {
        Arc::new(PortPools(std::iter::once(default).chain(more).collect()))
    }

    /// The pool of interface `index`; the default's for one not configured (the
    /// configuration's checks rule that out).
    pub fn of(&self, index: usize) -> &Arc<PortPool> {
        self.0.get(index).unwrap_or(&self.0[0])
    }
}

fn bind(address: IpAddr, port: u16) -> std::io::Result<UdpSocket> {
    let socket = UdpSocket::bind(SocketAddr::new(address, port))?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_even_odd_and_returned_on_drop() {
        let metrics = Arc::new(Metrics::new());
        let pool = PortPool::new("127.0.0.1".parse().unwrap(), [31001, 31008], metrics);
        assert_eq!(pool.available(), 3); // 31002, 31004, 31006
        let a = pool.allocate().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.rtp_address().port() % 2, 0);
        assert_eq!(
            a.rtcp.local_addr().map(|s| s.port()).ok(),
            Some(a.rtp_address().port() + 1)
        );
        let b = pool.allocate();
        let c = pool.allocate();
        assert!(b.is_ok() && c.is_ok());
        assert_eq!(pool.allocate().err(), Some(PortShortage::NoPorts));
        drop(a);
        assert_eq!(pool.available(), 1);
        assert!(pool.allocate().is_ok());
    }

    /// A call outside the reserve leaves the kept pairs; a reserved platform's call takes them.
    #[test]
    fn kept_pairs_are_left_to_the_reserve() {
        let metrics = Arc::new(Metrics::new());
        let pool = PortPool::new("127.0.0.1".parse().unwrap(), [31201, 31208], metrics);
        let first = pool.allocate_leaving(2);
        assert!(first.is_ok());
        assert_eq!(pool.allocate_leaving(2).err(), Some(PortShortage::Reserved));
        let kept = [pool.allocate(), pool.allocate()];
        assert!(kept.iter().all(Result::is_ok));
    }

    #[test]
    fn busy_port_is_skipped() {
        let metrics = Arc::new(Metrics::new());
        let _holder = UdpSocket::bind("127.0.0.1:31102");
        let pool = PortPool::new("127.0.0.1".parse().unwrap(), [31102, 31105], metrics);
        let leg = pool.allocate().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(leg.rtp_address().port(), 31104);
    }
}
