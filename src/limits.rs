//! The process's file-descriptor budget: what the configuration can hold open at once, and the
//! soft `RLIMIT_NOFILE` raised to meet it.
//!
//! Every media port, TCP connection and API client is a descriptor. Run out and the next call
//! has no RTP socket and `/healthz` cannot be accepted; so the budget is checked before the
//! gateway starts (`--check` fails, a start warns) rather than found at the height of a surge.

/// Inbound HTTP connections (`/healthz`, `/metrics`) open at once.
pub const MAX_HTTP_CONNECTIONS: usize = 64;
/// Work-order gRPC connections open at once (a few per platform).
pub const MAX_GRPC_CONNECTIONS: usize = 64;
/// Descriptors the process needs whatever the load: stdio, the store's files, pollers, the
/// runtime's wakers, the listening sockets.
const BASE: u64 = 64;

/// What the configuration can hold open at once, by part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// `sip.max_tcp_connections`.
    pub sip_tcp: u64,
    /// Four ports a call (bounded by `media.ports`), two descriptors a port.
    pub media: u64,
    pub api: u64,
    pub base: u64,
}

impl Budget {
    /// The budget of `max_calls` calls in the inclusive media port range `[low, high]` and
    /// `max_tcp_connections` SIP connections.
    pub fn new([low, high]: [u16; 2], max_calls: usize, max_tcp_connections: usize) -> Budget {
        let range = u64::from(high.saturating_sub(low)) + 1;
        Self::with_ports(range, max_calls, max_tcp_connections)
    }

    /// As [`Budget::new`], with `ports` media ports in all (every interface's ranges).
    pub fn with_ports(ports: u64, max_calls: usize, max_tcp_connections: usize) -> Budget {
        // Four ports a call (RTP and RTCP of two legs), each bound once and once duplicated
        // for its relay worker.
        let ports = (max_calls as u64).saturating_mul(4).min(ports);
        Budget {
            sip_tcp: max_tcp_connections as u64,
            media: ports * 2,
            api: (MAX_HTTP_CONNECTIONS + MAX_GRPC_CONNECTIONS) as u64,
            base: BASE,
        }
    }

    pub fn total(&self) -> u64 {
        self.sip_tcp + self.media + self.api + self.base
    }

    /// The calls the gateway takes at once under `limit`: `sip.max_calls`, or fewer when their
    /// media sockets would not fit beside the API, the process and [`MIN_TCP`] connections. A
    /// call beyond is refused 503 before any socket is tried, instead of failing on EMFILE.
    pub fn call_allowance(&self, limit: &Limit, max_calls: usize) -> usize {
        let room = limit.soft.saturating_sub(self.api + self.base + MIN_TCP) / DESCRIPTORS_PER_CALL;
        (max_calls as u64).min(room).max(1) as usize
    }

    /// The TCP connections the gateway lets in under `limit`: `sip.max_tcp_connections`, or
    /// fewer when that many would leave the media (of the calls it takes), the API or the
    /// process without descriptors (at least [`MIN_TCP`], so TCP peers are never shut out).
    pub fn tcp_allowance(&self, limit: &Limit, calls: usize) -> usize {
        let media = self.media.min(calls as u64 * DESCRIPTORS_PER_CALL);
        let rest = media + self.api + self.base;
        let room = limit.soft.saturating_sub(rest).max(MIN_TCP);
        self.sip_tcp.min(room) as usize
    }
}

/// Four ports a call, each bound once and duplicated once for its relay worker.
const DESCRIPTORS_PER_CALL: u64 = 8;

/// The fewest TCP connections a tight descriptor limit leaves.
pub const MIN_TCP: u64 = 16;

/// The descriptor limits after [`raise`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub soft: u64,
    pub hard: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard one (systemd's default soft limit is 1,024, its
/// hard one 524,288) and returns both; an unlimited hard limit is kept at a million.
pub fn raise() -> Limit {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let current = getrlimit(Resource::Nofile);
    let hard = current.maximum.unwrap_or(1 << 20);
    let soft = current.current.unwrap_or(hard);
    if soft < hard {
        let raised = Rlimit {
            current: Some(hard),
            maximum: current.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            return Limit { soft: hard, hard };
        }
    }
    Limit { soft, hard }
}

/// Why the configuration does not fit the descriptor limit, naming the keys to change.
pub fn shortfall(budget: &Budget, limit: &Limit) -> Option<String> {
    (budget.total() > limit.soft).then(|| {
        format!(
            "the configuration can hold {} file descriptors open ({} for sip.max_tcp_connections, \
             {} for the media sockets of sip.max_calls calls within media.ports, {} for the HTTP and gRPC \
             clients, {} for the process) but the limit is {} (hard {}): raise LimitNOFILE (or \
             `ulimit -n`) or lower sip.max_tcp_connections / sip.max_calls",
            budget.total(),
            budget.sip_tcp,
            budget.media,
            budget.api,
            budget.base,
            limit.soft,
            limit.hard
        )
    })
}

/// EMFILE or ENFILE: the process (or the system) has no descriptor left.
pub fn is_out_of_descriptors(error: &std::io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(code) if code == rustix::io::Errno::MFILE.raw_os_error()
            || code == rustix::io::Errno::NFILE.raw_os_error()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// EMFILE and ENFILE read as running out of descriptors (overload), other errors not.
    #[test]
    fn out_of_descriptors_is_told_apart() {
        let emfile = std::io::Error::from_raw_os_error(rustix::io::Errno::MFILE.raw_os_error());
        let enfile = std::io::Error::from_raw_os_error(rustix::io::Errno::NFILE.raw_os_error());
        let in_use = std::io::Error::from(std::io::ErrorKind::AddrInUse);
        assert!(is_out_of_descriptors(&emfile) && is_out_of_descriptors(&enfile));
        assert!(!is_out_of_descriptors(&in_use));
    }

    #[test]
    fn the_budget_names_what_does_not_fit() {
        let budget = Budget {
            sip_tcp: 4096,
            media: 16_000,
            api: 128,
            base: 64,
        };
        assert_eq!(budget.total(), 20_288);
        let fits = Limit {
            soft: 524_288,
            hard: 524_288,
        };
        assert_eq!(shortfall(&budget, &fits), None);
        let systemd_default = Limit {
            soft: 1024,
            hard: 1024,
        };
        let Some(reason) = shortfall(&budget, &systemd_default) else {
            panic!("20,288 descriptors do not fit in 1,024");
        };
        assert!(reason.contains("sip.max_tcp_connections"), "{reason}");
        assert!(reason.contains("limit is 1024"), "{reason}");
        // The media keep their descriptors: TCP gets what is left.
        let budget = Budget {
            media: 400,
            ..budget
        };
        assert_eq!(
            budget.tcp_allowance(&systemd_default, 4000),
            1024 - 400 - 128 - 64
        );
        assert_eq!(budget.tcp_allowance(&fits, 4000), 4096);
        let tiny = Limit {
            soft: 300,
            hard: 300,
        };
        assert_eq!(budget.tcp_allowance(&tiny, 4000), MIN_TCP as usize);
        // Calls are held to what their media sockets fit in: 20,000 descriptors hold 2,474
        // calls beside the API, the process and 16 connections, not the 3,000 ports allow.
        let machine = Limit {
            soft: 20_000,
            hard: 20_000,
        };
        let wide = Budget {
            media: 24_000,
            ..budget
        };
        assert_eq!(wide.call_allowance(&machine, 20_000), 2474);
        assert_eq!(wide.call_allowance(&fits, 20_000), 20_000);
        assert_eq!(
            wide.tcp_allowance(&machine, 2474),
            (20_000 - 2474 * 8 - 192) as usize
        );
    }
}
