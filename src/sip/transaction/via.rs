//! The top Via of an inbound message and where its responses go: [`stamp_via`] records the
//! real source in `received` and `rport` (RFC 3261 §18.2.1, RFC 3581 §4), and
//! [`request_response_target`] / [`response_target`] read them back to address responses
//! (§18.2.2, RFC 3581 §4). Pure: the source address and [`Flow`] come from the transport.

use std::net::{IpAddr, SocketAddr};

use crate::sip::message::{self, Request, Response, Via};
use crate::sip::target::{Flow, InterfaceId, Target};

/// The port a Via's sent-by means when it names none (§18.2.1).
const DEFAULT_PORT: u16 = 5060;

/// RFC 3581 §4 / RFC 3261 §18.2.1: record where the request really came from.
pub fn stamp_via(headers: &mut message::Headers, source: SocketAddr) {
    let Some(first) = headers.get("Via").map(str::to_string) else {
        return;
    };
    let mut elements: Vec<String> = message::header::split_list(&first)
        .map(str::to_string)
        .collect();
    let Some(top) = elements.first().and_then(|v| Via::parse(v).ok()) else {
        return;
    };
    let mut top = top;
    let source_ip = source.ip().to_string();
    let sent_by_ip = match &top.host {
        message::Host::Ip(ip) => Some(*ip),
        message::Host::Name(_) => None,
    };
    if sent_by_ip != Some(source.ip()) {
        top.set_param("received", Some(source_ip.clone()));
    }
    if top.param("rport").is_some() {
        top.set_param("received", Some(source_ip));
        top.set_param("rport", Some(source.port().to_string()));
    }
    elements[0] = top.to_string();
    let rewritten = elements.join(", ");
    // Replace only the first Via line, keeping the others in place.
    let mut replaced = false;
    let mut rebuilt = message::Headers::new();
    for header in headers.iter() {
        if !replaced && header.name.eq_ignore_ascii_case("Via") {
            rebuilt.push("Via", rewritten.clone());
            replaced = true;
        } else {
            rebuilt.push(&header.name, header.value.clone());
        }
    }
    *headers = rebuilt;
}

/// Where responses to `request` go (§18.2.2, RFC 3581 §4).
pub fn request_response_target(request: &Request, source: SocketAddr, flow: Flow) -> Target {
    match flow {
        Flow::Udp(interface) => match request.top_via() {
            Some(via) => udp_response_address(&via, source, interface),
            None => Target::Udp(interface, source),
        },
        reliable => reliable.response_target(source),
    }
}

/// Where a response built from a request that failed to parse goes: as for
/// [`request_response_target`], read from the response's copy of the Via.
pub fn response_target(response: &Response, source: SocketAddr, flow: Flow) -> Target {
    match flow {
        Flow::Udp(interface) => match response.top_via() {
            Some(via) => udp_response_address(&via, source, interface),
            None => Target::Udp(interface, source),
        },
        reliable => reliable.response_target(source),
    }
}

/// §18.2.2 over UDP: to `received` (else the sent-by host, else the source) at `rport` (else
/// the sent-by port, else 5060), from the interface the request came in on.
pub fn udp_response_address(via: &Via, source: SocketAddr, interface: InterfaceId) -> Target {
    let received: Option<IpAddr> = via.param("received").flatten().and_then(|r| r.parse().ok());
    let rport: Option<u16> = via.param("rport").flatten().and_then(|p| p.parse().ok());
    let ip = received
        .or(match via.host {
            message::Host::Ip(ip) => Some(ip),
            message::Host::Name(_) => None,
        })
        .unwrap_or(source.ip());
    let port = rport.or(via.port).unwrap_or(DEFAULT_PORT);
    Target::Udp(interface, SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An interface other than the default: responses keep the one the request came on.
    const I: InterfaceId = InterfaceId(2);

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn via_stamp_and_response_address_follow_rfc3581() {
        let mut headers = message::Headers::new();
        headers.push(
            "Via",
            "SIP/2.0/UDP 10.0.0.5:5070;branch=z9hG4bK1;rport, SIP/2.0/UDP p;branch=z9hG4bK0",
        );
        headers.push("Via", "SIP/2.0/UDP q;branch=z9hG4bKq");
        let source = addr("192.0.2.7:40000");
        stamp_via(&mut headers, source);
        let top = headers.get("Via").unwrap_or_default();
        assert!(top.starts_with("SIP/2.0/UDP 10.0.0.5:5070;branch=z9hG4bK1;rport=40000;received=192.0.2.7, SIP/2.0/UDP p"), "{top}");
        assert_eq!(headers.get_all("Via").count(), 2);
        let via = Via::parse(message::header::split_list(top).next().unwrap_or_default())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            udp_response_address(&via, source, I),
            Target::Udp(I, source)
        );
    }

    #[test]
    fn response_without_rport_goes_to_received_and_sent_by_port() {
        let mut headers = message::Headers::new();
        headers.push("Via", "SIP/2.0/UDP 10.0.0.5:5070;branch=z9hG4bK1");
        let source = addr("192.0.2.7:40000");
        stamp_via(&mut headers, source);
        let via =
            Via::parse(headers.get("Via").unwrap_or_default()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            udp_response_address(&via, source, I),
            Target::Udp(I, addr("192.0.2.7:5070"))
        );
    }

    #[test]
    fn a_via_from_the_address_it_names_gets_no_received() {
        let mut headers = message::Headers::new();
        headers.push("Via", "SIP/2.0/UDP 192.0.2.7:5070;branch=z9hG4bK1");
        let source = addr("192.0.2.7:5070");
        stamp_via(&mut headers, source);
        assert_eq!(
            headers.get("Via"),
            Some("SIP/2.0/UDP 192.0.2.7:5070;branch=z9hG4bK1")
        );
    }

    #[test]
    fn a_sent_by_without_port_is_answered_on_5060() {
        let via =
            Via::parse("SIP/2.0/UDP 10.0.0.5;branch=z9hG4bK1").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            udp_response_address(&via, addr("192.0.2.7:40000"), I),
            Target::Udp(I, addr("10.0.0.5:5060"))
        );
    }

    #[test]
    fn a_response_over_tcp_goes_back_on_the_connection_it_came_by() {
        let mut headers = message::Headers::new();
        headers.push("Via", "SIP/2.0/TCP 10.0.0.5:5070;branch=z9hG4bK1");
        let response = message::response_from_headers(&headers, 400, "Bad Request", None);
        let source = addr("192.0.2.7:40000");
        assert_eq!(
            response_target(&response, source, Flow::Tcp(I, 9)),
            Target::Connection(I, 9, source)
        );
    }
}
