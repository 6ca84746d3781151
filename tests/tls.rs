//! SIP over TLS on loopback, with a test CA (rcgen): a carrier connects to the gateway's TLS
//! port presenting a client certificate, its call goes to an agent the gateway reaches over
//! TLS (checking the agent's certificate), and both legs carry the call to its end. A client
//! without a certificate, and an agent whose certificate no trusted CA signed, get nowhere.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use common::pki::{ca, leaf, leaf_for, Leaf};
use common::{Gateway, WAIT};
use hotline_gateway::sip::message::{self, Frame, Message, Request, Response};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A CA, and certificates for 127.0.0.1 signed by it (or by another, untrusted one).
struct Pki {
    dir: tempfile::TempDir,
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        let dir = match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => panic!("{e}"),
        };
        Pki {
            dir,
            ca: ca("hotline test CA"),
        }
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        if let Err(e) = std::fs::write(&path, text) {
            panic!("{e}");
        }
        path
    }

    fn roots(&self) -> Arc<rustls::RootCertStore> {
        let mut roots = rustls::RootCertStore::empty();
        if let Err(e) = roots.add(self.ca.der().clone()) {
            panic!("{e}");
        }
        Arc::new(roots)
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// SIP messages over one TLS stream.
struct Stream<S> {
    io: S,
    buffer: BytesMut,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Stream<S> {
    async fn send(&mut self, bytes: &[u8]) {
        if let Err(e) = self.io.write_all(bytes).await {
            panic!("TLS write: {e}");
        }
        if let Err(e) = self.io.flush().await {
            panic!("TLS flush: {e}");
        }
    }

    async fn recv(&mut self) -> Message {
        loop {
            if let Ok(Frame::Message { length }) = message::frame(&self.buffer, 65_535) {
                let bytes = self.buffer.split_to(length);
                match message::parse(&bytes) {
                    Ok(m) => return m,
                    Err(e) => panic!("unparsable message over TLS: {e:?}"),
                }
            }
            match tokio::time::timeout(WAIT, self.io.read_buf(&mut self.buffer)).await {
                Ok(Ok(n)) if n > 0 => {}
                other => panic!("TLS stream silent or closed: {other:?}"),
            }
        }
    }

    async fn response(&mut self, status: u16) -> Response {
        loop {
            match self.recv().await {
                Message::Response(r) if r.status == status => return r,
                Message::Response(r) if r.status >= 200 => {
                    panic!("expected {status}, got {} {}", r.status, r.reason)
                }
                _ => continue,
            }
        }
    }

    async fn request(&mut self, method: &str) -> Request {
        loop {
            if let Message::Request(r) = self.recv().await {
                if r.method.as_str() == method {
                    return r;
                }
            }
        }
    }
}

/// An agent desk listening for TLS with `cert`.
async fn tls_desk(cert: &Leaf) -> (TcpListener, tokio_rustls::TlsAcceptor) {
    tls_desk_at(cert, "127.0.0.1").await
}

/// An agent desk listening for TLS with `cert` on `ip`.
async fn tls_desk_at(cert: &Leaf, ip: &str) -> (TcpListener, tokio_rustls::TlsAcceptor) {
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map(|b| b.with_no_client_auth())
        .and_then(|b| b.with_single_cert(cert.chain.clone(), cert.key.clone_key()));
    let config = match config {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    let listener = match TcpListener::bind((ip, 0)).await {
        Ok(l) => l,
        Err(e) => panic!("{e}"),
    };
    (listener, tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// A carrier's TLS connection to the gateway, with `cert` as its client certificate (or none).
async fn carrier_connects(
    pki: &Pki,
    gateway: SocketAddr,
    cert: Option<&Leaf>,
) -> std::io::Result<Stream<tokio_rustls::client::TlsStream<TcpStream>>> {
    let builder = match rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
    {
        Ok(b) => b.with_root_certificates(pki.roots()),
        Err(e) => panic!("{e}"),
    };
    let config = match cert {
        Some(cert) => match builder.with_client_auth_cert(cert.chain.clone(), cert.key.clone_key())
        {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        },
        None => builder.with_no_client_auth(),
    };
    let tcp = TcpStream::connect(gateway).await?;
    let name = ServerName::IpAddress(gateway.ip().into());
    let mut io = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    // TLS 1.3 reports a refused client certificate only on the first read.
    io.write_all(b"\r\n\r\n").await?;
    io.flush().await?;
    let mut probe = [0u8; 2];
    match tokio::time::timeout(Duration::from_millis(300), io.read(&mut probe)).await {
        Ok(Err(e)) => return Err(e),
        Ok(Ok(0)) => return Err(std::io::Error::other("closed by the gateway")),
        _ => {}
    }
    Ok(Stream {
        io,
        buffer: BytesMut::from(&probe[..0]),
    })
}

fn invite(gateway: SocketAddr, me: SocketAddr) -> String {
    let sdp = common::sdp(me, &[8], "sendrecv");
    format!(
        "INVITE sip:12345@{gateway} SIP/2.0\r\nVia: SIP/2.0/TLS {me};branch=z9hG4bKtls1\r\n\
         From: <sip:13800138000@{me}>;tag=c1\r\nTo: <sip:12345@{gateway}>\r\nCall-ID: tls-call@test\r\n\
         CSeq: 1 INVITE\r\nContact: <sip:citizen@{me};transport=tls>\r\nMax-Forwards: 70\r\n\
         Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    )
}

async fn gateway_with(pki: &Pki, gateway: &Leaf, desk: SocketAddr) -> Gateway {
    let (cert, key, ca) = (
        pki.write("gateway.pem", &gateway.cert_pem),
        pki.write("gateway.key", &gateway.key_pem),
        pki.write("ca.pem", &pki.ca.pem()),
    );
    let sip = format!(
        "tls_listen = \"127.0.0.1:0\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\ntls_ca = \"{}\"\n",
        cert.display(),
        key.display(),
        ca.display()
    );
    Gateway::start(
        &[
            (
                "carrier",
                "127.0.0.1:1".parse().unwrap_or_else(|_| unreachable!()),
                "any_port = true",
            ),
            ("hotline", desk, "transport = \"tls\""),
        ],
        &[("12345", &["hotline"])],
        &sip,
        "",
    )
    .await
}

#[tokio::test]
async fn a_call_over_tls_on_both_legs_with_certificates_checked_both_ways() {
    let pki = Pki::new();
    let (gateway_cert, carrier_cert, desk_cert) = (leaf(&pki.ca), leaf(&pki.ca), leaf(&pki.ca));
    let (desk, acceptor) = tls_desk(&desk_cert).await;
    let desk_address = match desk.local_addr() {
        Ok(a) => a,
        Err(e) => panic!("{e}"),
    };
    let gateway = gateway_with(&pki, &gateway_cert, desk_address).await;
    let Some(tls) = gateway.sip_tls else {
        panic!("no TLS port");
    };

    let mut carrier = match carrier_connects(&pki, tls, Some(&carrier_cert)).await {
        Ok(s) => s,
        Err(e) => panic!("the gateway refused a good client certificate: {e}"),
    };
    let me = match carrier.io.get_ref().0.local_addr() {
        Ok(a) => a,
        Err(e) => panic!("{e}"),
    };
    let offer = invite(tls, me);
    carrier.send(offer.as_bytes()).await;
    carrier.response(100).await;

    // The gateway opens TLS to the desk (whose certificate it checks) and sends the INVITE.
    let (tcp, _) = match tokio::time::timeout(WAIT, desk.accept()).await {
        Ok(Ok(a)) => a,
        other => panic!("the gateway never connected to the desk: {other:?}"),
    };
    let io = match acceptor.accept(tcp).await {
        Ok(io) => io,
        Err(e) => panic!("TLS towards the desk failed: {e}"),
    };
    let mut agent = Stream {
        io,
        buffer: BytesMut::new(),
    };
    let incoming = agent.request("INVITE").await;
    let via = incoming.headers.get("Via").unwrap_or_default().to_string();
    assert!(via.starts_with("SIP/2.0/TLS "), "{via}");
    assert!(
        incoming
            .headers
            .get("Contact")
            .is_some_and(|c| c.contains(&format!(":{};transport=tls", tls.port()))),
        "{incoming:?}"
    );
    let mut ok = Response::for_request(&incoming, 200, Some("agent"));
    ok.headers.push(
        "Contact",
        format!("<sip:agent@{desk_address};transport=tls>"),
    );
    let answer = common::sdp(desk_address, &[8], "sendrecv");
    ok.headers.push("Content-Type", "application/sdp");
    ok.body = bytes::Bytes::from(answer);
    agent.send(&ok.to_bytes()).await;
    let answered = carrier.response(200).await;
    let to = answered.headers.get("To").unwrap_or_default().to_string();
    let ack = format!(
        "ACK sip:gw@{tls};transport=tls SIP/2.0\r\nVia: SIP/2.0/TLS {me};branch=z9hG4bKtls2\r\n\
         From: <sip:13800138000@{me}>;tag=c1\r\nTo: {to}\r\nCall-ID: tls-call@test\r\n\
         CSeq: 1 ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    );
    carrier.send(ack.as_bytes()).await;
    agent.request("ACK").await;

    // The carrier hangs up; the desk gets the BYE over its TLS connection.
    let bye = format!(
        "BYE sip:gw@{tls};transport=tls SIP/2.0\r\nVia: SIP/2.0/TLS {me};branch=z9hG4bKtls3\r\n\
         From: <sip:13800138000@{me}>;tag=c1\r\nTo: {to}\r\nCall-ID: tls-call@test\r\n\
         CSeq: 2 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    );
    carrier.send(bye.as_bytes()).await;
    carrier.response(200).await;
    let bye = agent.request("BYE").await;
    agent
        .send(&Response::for_request(&bye, 200, None).to_bytes())
        .await;
    let record = gateway.ended_record("tls-call@test").await;
    assert_eq!(record.final_status, Some(200), "{record:?}");
    assert_eq!(record.b_peer.as_deref(), Some("hotline"), "{record:?}");

    // A client without a certificate is turned away in the handshake.
    assert!(carrier_connects(&pki, tls, None).await.is_err());
    assert!(
        gateway
            .metric("hotline_sip_tls_handshake_failures_total")
            .await
            >= Some(1.0)
    );
}

#[tokio::test]
async fn a_desk_whose_certificate_no_trusted_ca_signed_is_not_called() {
    let pki = Pki::new();
    let stranger = ca("someone else's CA");
    let (gateway_cert, carrier_cert, desk_cert) = (leaf(&pki.ca), leaf(&pki.ca), leaf(&stranger));
    let (desk, acceptor) = tls_desk(&desk_cert).await;
    let desk_address = match desk.local_addr() {
        Ok(a) => a,
        Err(e) => panic!("{e}"),
    };
    let gateway = gateway_with(&pki, &gateway_cert, desk_address).await;
    let Some(tls) = gateway.sip_tls else {
        panic!("no TLS port");
    };
    let desk_task = tokio::spawn(async move {
        // The gateway gives up in the handshake: nothing is ever read here.
        if let Ok((tcp, _)) = desk.accept().await {
            let _ = acceptor.accept(tcp).await;
        }
    });
    let mut carrier = match carrier_connects(&pki, tls, Some(&carrier_cert)).await {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    };
    let me = match carrier.io.get_ref().0.local_addr() {
        Ok(a) => a,
        Err(e) => panic!("{e}"),
    };
    carrier.send(invite(tls, me).as_bytes()).await;
    carrier.response(100).await;
    // The handshake fails on the certificate: the INVITE fails at once (503), not after Timer B.
    carrier.response(503).await;
    assert!(
        gateway
            .metric("hotline_sip_tls_handshake_failures_total")
            .await
            >= Some(1.0)
    );
    desk_task.abort();
}

/// The desk is reached over TLS on an interface of its own (the e-government network,
/// 127.0.0.2, `tls` on it): the gateway connects from that address, checks the desk's
/// certificate for it, and names that interface's TLS address in Via and Contact; the citizen
/// calls in over UDP on the default interface.
#[tokio::test]
async fn a_desk_over_tls_on_another_interface_is_reached_from_that_interfaces_address() {
    let pki = Pki::new();
    let (gateway_cert, desk_cert) = (leaf(&pki.ca), leaf_for(&pki.ca, "127.0.0.2"));
    let (desk, acceptor) = tls_desk_at(&desk_cert, "127.0.0.2").await;
    let desk_address = match desk.local_addr() {
        Ok(a) => a,
        Err(e) => panic!("{e}"),
    };
    let (cert, key, ca) = (
        pki.write("gateway.pem", &gateway_cert.cert_pem),
        pki.write("gateway.key", &gateway_cert.key_pem),
        pki.write("ca.pem", &pki.ca.pem()),
    );
    let sip = format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"\ntls_ca = \"{}\"\n",
        cert.display(),
        key.display(),
        ca.display()
    );
    let [low, high] = common::media_block();
    let interface = format!(
        "\n[[interface]]\nname = \"egov\"\nsip = \"127.0.0.2:0\"\ntls = \"127.0.0.2:0\"\n\
         media = \"127.0.0.2\"\nports = [{low}, {high}]\n"
    );
    let mut citizen = common::Ua::bind(
        "carrier",
        "127.0.0.1".parse().unwrap_or_else(|_| unreachable!()),
    )
    .await;
    let mut gateway = Gateway::start_with_tables(
        &[
            ("carrier", citizen.address, ""),
            (
                "hotline",
                desk_address,
                "transport = \"tls\"\ninterface = \"egov\"",
            ),
        ],
        &[("12345", &["hotline"])],
        &sip,
        "",
        &interface,
    )
    .await;
    citizen.set_gateway(gateway.sip);
    let rtp = common::RtpPeer::bind(citizen.address.ip()).await;
    let offer = citizen.invite(
        "12345",
        "13800138000",
        &common::sdp(rtp.address, &[8], "sendrecv"),
        "",
    );
    citizen.send_request(&offer).await;

    let (tcp, from) = match tokio::time::timeout(WAIT, desk.accept()).await {
        Ok(Ok(a)) => a,
        other => panic!("the gateway never connected to the desk: {other:?}"),
    };
    assert_eq!(
        from.ip().to_string(),
        "127.0.0.2",
        "connected from the interface's address"
    );
    let io = match acceptor.accept(tcp).await {
        Ok(io) => io,
        Err(e) => panic!("TLS towards the desk failed: {e}"),
    };
    let mut agent = Stream {
        io,
        buffer: BytesMut::new(),
    };
    let incoming = agent.request("INVITE").await;
    let text = String::from_utf8_lossy(&incoming.to_bytes()).into_owned();
    assert!(
        !text.contains("127.0.0.1"),
        "only the interface's addresses:\n{text}"
    );
    let via = incoming.headers.get("Via").unwrap_or_default().to_string();
    assert!(via.starts_with("SIP/2.0/TLS 127.0.0.2:"), "{via}");
    let contact = incoming
        .headers
        .get("Contact")
        .unwrap_or_default()
        .to_string();
    assert!(
        contact.starts_with("<sip:gw@127.0.0.2:") && contact.contains(";transport=tls"),
        "{contact}"
    );
    let busy = Response::for_request(&incoming, 486, Some("agent"));
    agent.send(&busy.to_bytes()).await;
    let refused = citizen.expect_response("INVITE", 486).await;
    citizen
        .send_request(&message::ack_for_non_2xx(&offer, &refused))
        .await;
    agent.request("ACK").await;
    gateway.stop().await;
}
