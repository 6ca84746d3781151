//! Faults the fault tests inject into the built binary, to show what a real one would do: a
//! panic in a part ends the process, a stuck loop turns `/healthz` to 503.
//!
//! Only in debug builds (what `cargo test` runs), named by `HOTLINE_FAULT`; a release build
//! has none of this (`injected` is a constant `false`).

/// A fault the tests can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The endpoint's loop panics on an OPTIONS to `sip:fault@...`.
    EndpointPanic,
    /// The endpoint's loop blocks (its thread, 30 s) on an OPTIONS to `sip:fault@...`.
    EndpointStall,
    /// A relay worker panics when it is next asked whether it runs.
    RelayPanic,
    /// The store writer panics when it is next asked whether it runs.
    StorePanic,
}

impl Fault {
    #[cfg(debug_assertions)]
    fn name(self) -> &'static str {
        match self {
            Fault::EndpointPanic => "endpoint-panic",
            Fault::EndpointStall => "endpoint-stall",
            Fault::RelayPanic => "relay-panic",
            Fault::StorePanic => "store-panic",
        }
    }
}

/// Whether the tests injected `fault` into this process.
pub fn injected(fault: Fault) -> bool {
    #[cfg(debug_assertions)]
    {
        static NAMED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
        NAMED
            .get_or_init(|| std::env::var("HOTLINE_FAULT").ok())
            .as_deref()
            == Some(fault.name())
    }
    #[cfg(not(debug_assertions))]
    {
        let _ = fault;
        false
    }
}
