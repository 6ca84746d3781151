//! Unit tests of the transport: binding UDP and TCP on one port.

use super::*;

/// Port 0: a UDP port whose TCP twin is taken is given back and another one tried.
#[tokio::test]
async fn port_zero_finds_a_port_free_for_both() {
    let listen: SocketAddr = "127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}"));
    let mut tried = Vec::new();
    let (udp, port) = match bind_pair(listen, |address| {
        tried.push(address.port());
        if tried.len() < 3 {
            Err(std::io::Error::from(std::io::ErrorKind::AddrInUse))
        } else {
            Ok(address.port())
        }
    }) {
        Ok(pair) => pair,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(tried.len(), 3);
    assert_eq!(udp.local_addr().map(|a| a.port()).ok(), Some(port));
    // A configured port is never swapped for another.
    let fixed: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap_or(listen);
    drop(udp);
    let refused = bind_pair(fixed, |_| -> std::io::Result<()> {
        Err(std::io::Error::from(std::io::ErrorKind::AddrInUse))
    });
    assert!(matches!(
        refused,
        Err(TransportError::Bind {
            protocol: "TCP",
            ..
        })
    ));
}
