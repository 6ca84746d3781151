//! The I/O around the pure call model: the task that drives one call ([`driver`]), the
//! dispatcher that admits new requests and gives each admitted call its media and its task
//! ([`admission`]), a call's side of the work-order link ([`link`]), and the task that probes
//! peers with OPTIONS and marks them down or up ([`prober`]), and the one that keeps the
//! gateway registered at the peers it registers at ([`registrar`]). A call's recording and its
//! SIPREC session are kept by its task (`recording.rs`, `siprec.rs`).

pub mod admission;
pub mod cdr;
pub mod driver;
pub mod link;
pub mod prober;
mod recording;
pub mod registrar;
pub mod reserve;
mod siprec;
