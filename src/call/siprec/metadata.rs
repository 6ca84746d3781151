//! SIPREC metadata (RFC 7865): the recorded call, who is in it and which of the two streams
//! each party sends and receives, as the `application/rs-metadata+xml` body the recording
//! server gets with the INVITE and every re-INVITE. Always sent whole (`datamode` complete,
//! §6.2): a party who left stays listed with its `disassociate-time`, so the server has the
//! call's whole history in each body.
//!
//! Stream 1 is what the citizen (party 0, the caller) said, stream 2 what the citizen heard:
//! the citizen sends 1 and receives 2, every other party sends into 2 and receives 1 (§6.6).
//! The linkage ids and the ticket number go in as extension data (§6.12) in the gateway's own
//! namespace, [`EXTENSION_NAMESPACE`].

use base64::Engine;

use crate::ids::IdGenerator;

pub const CONTENT_TYPE: &str = "application/rs-metadata+xml";
const NAMESPACE: &str = "urn:ietf:params:xml:ns:recording:1";
/// The namespace of the gateway's extension data (`hl:` in the body).
pub const EXTENSION_NAMESPACE: &str = "urn:x-hotline-gateway:recording:1";

/// The SDP `a=label` of each stream (RFC 4574), as the metadata's `<label>` names it.
pub const LABELS: [&str; 2] = ["1", "2"];

/// One party as the metadata names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Party {
    /// Its number (the user part of its AOR).
    pub number: String,
    /// The host of its AOR: the peer's address.
    pub host: String,
    /// The `[[peer]]` it came or was reached through.
    pub peer: String,
    pub platform: Option<String>,
}

#[derive(Debug, Clone)]
struct Participant {
    id: String,
    /// The relay's party number (0 the citizen, 1 the agent's leg, 2 on the guests).
    party: usize,
    who: Party,
    joined_ms: i64,
    left_ms: Option<i64>,
}

/// A linkage the call has had: a transfer or a conference invitation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Linkage {
    pub id: String,
    pub kind: String,
    pub target: String,
    /// `answered`, `failed`, or none while it is under way.
    pub outcome: Option<String>,
}

/// The recording session's metadata, kept as the call goes.
#[derive(Debug, Clone)]
pub struct Metadata {
    session_id: String,
    call_id: String,
    start_ms: i64,
    stream_ids: [String; 2],
    participants: Vec<Participant>,
    linkages: Vec<Linkage>,
    ticket: Option<String>,
}

/// A fresh RFC 7865 §6.9 identifier: 128 random bits, base64.
fn identifier(ids: &mut IdGenerator) -> String {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&ids.next_u64().to_be_bytes());
    bytes[8..].copy_from_slice(&ids.next_u64().to_be_bytes());
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

impl Metadata {
    /// The call `call_id` answered at `start_ms` between the citizen and `answered`.
    pub fn new(
        ids: &mut IdGenerator,
        call_id: &str,
        start_ms: i64,
        citizen: Party,
        answered: Party,
    ) -> Metadata {
        let mut metadata = Metadata {
            session_id: identifier(ids),
            call_id: call_id.to_string(),
            start_ms,
            stream_ids: [identifier(ids), identifier(ids)],
            participants: Vec::new(),
            linkages: Vec::new(),
            ticket: None,
        };
        metadata.joined(ids, start_ms, 0, citizen);
        metadata.joined(ids, start_ms, 1, answered);
        metadata
    }

    /// `who` is party `party` from `at_ms` on; false if it was already (nothing changed).
    pub fn joined(&mut self, ids: &mut IdGenerator, at_ms: i64, party: usize, who: Party) -> bool {
        if self.present(party).is_some_and(|p| p.who == who) {
            return false;
        }
        self.left(at_ms, party);
        self.participants.push(Participant {
            id: identifier(ids),
            party,
            who,
            joined_ms: at_ms,
            left_ms: None,
        });
        true
    }

    /// Party `party` left at `at_ms`; false if it was not in.
    pub fn left(&mut self, at_ms: i64, party: usize) -> bool {
        match self
            .participants
            .iter_mut()
            .find(|p| p.party == party && p.left_ms.is_none())
        {
            Some(participant) => {
                participant.left_ms = Some(at_ms);
                true
            }
            None => false,
        }
    }

    fn present(&self, party: usize) -> Option<&Participant> {
        self.participants
            .iter()
            .find(|p| p.party == party && p.left_ms.is_none())
    }

    /// A linkage begun or settled; false if nothing changed.
    pub fn linkage(&mut self, linkage: Linkage) -> bool {
        match self.linkages.iter_mut().find(|l| l.id == linkage.id) {
            Some(known) if *known == linkage => false,
            Some(known) => {
                *known = linkage;
                true
            }
            None => {
                self.linkages.push(linkage);
                true
            }
        }
    }

    /// The call's ticket number (工单号); false if it was already.
    pub fn ticket(&mut self, number: &str) -> bool {
        if self.ticket.as_deref() == Some(number) {
            return false;
        }
        self.ticket = Some(number.to_string());
        true
    }

    /// The XML body.
    pub fn to_xml(&self) -> String {
        let time = crate::calendar::rfc3339;
        let session = &self.session_id;
        let mut xml = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\r\n\
             <recording xmlns=\"{NAMESPACE}\" xmlns:hl=\"{EXTENSION_NAMESPACE}\">\r\n\
             <datamode>complete</datamode>\r\n\
             <session session_id=\"{session}\">\r\n\
             <start-time>{}</start-time>\r\n\
             <hl:call-id>{}</hl:call-id>\r\n",
            time(self.start_ms),
            escape(&self.call_id)
        );
        if let Some(ticket) = &self.ticket {
            xml += &format!("<hl:ticket>{}</hl:ticket>\r\n", escape(ticket));
        }
        for linkage in &self.linkages {
            xml += &format!(
                "<hl:linkage id=\"{}\" kind=\"{}\" target=\"{}\"{}/>\r\n",
                escape(&linkage.id),
                escape(&linkage.kind),
                escape(&linkage.target),
                linkage
                    .outcome
                    .as_ref()
                    .map(|o| format!(" outcome=\"{}\"", escape(o)))
                    .unwrap_or_default()
            );
        }
        xml += "</session>\r\n";
        for participant in &self.participants {
            let who = &participant.who;
            xml += &format!(
                "<participant participant_id=\"{}\">\r\n\
                 <nameID aor=\"sip:{}@{}\"><name>{}</name></nameID>\r\n\
                 <hl:peer>{}</hl:peer>\r\n",
                participant.id,
                escape(&who.number),
                escape(&who.host),
                escape(&who.number),
                escape(&who.peer)
            );
            if let Some(platform) = &who.platform {
                xml += &format!("<hl:platform>{}</hl:platform>\r\n", escape(platform));
            }
            xml += "</participant>\r\n";
        }
        for (label, id) in LABELS.iter().zip(&self.stream_ids) {
            xml += &format!(
                "<stream stream_id=\"{id}\" session_id=\"{session}\"><label>{label}</label></stream>\r\n"
            );
        }
        xml += &format!(
            "<sessionrecordingassoc session_id=\"{session}\">\
             <associate-time>{}</associate-time></sessionrecordingassoc>\r\n",
            time(self.start_ms)
        );
        for participant in &self.participants {
            xml += &format!(
                "<participantsessionassoc participant_id=\"{}\" session_id=\"{session}\">\
                 <associate-time>{}</associate-time>",
                participant.id,
                time(participant.joined_ms)
            );
            if let Some(left) = participant.left_ms {
                xml += &format!("<disassociate-time>{}</disassociate-time>", time(left));
            }
            xml += "</participantsessionassoc>\r\n";
        }
        let [said, heard] = &self.stream_ids;
        for participant in self.participants.iter().filter(|p| p.left_ms.is_none()) {
            let (send, recv) = if participant.party == 0 {
                (said, heard)
            } else {
                (heard, said)
            };
            xml += &format!(
                "<participantstreamassoc participant_id=\"{}\">\
                 <send>{send}</send><recv>{recv}</recv></participantstreamassoc>\r\n",
                participant.id
            );
        }
        xml += "</recording>\r\n";
        xml
    }
}

/// XML character data and attribute values: the five predefined entities (XML 1.0 §4.6);
/// control characters a peer sent, which XML 1.0 cannot carry, are dropped.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if c.is_control() && !matches!(c, '\t' | '\n' | '\r') => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn party(number: &str, peer: &str, platform: Option<&str>) -> Party {
        Party {
            number: number.into(),
            host: "192.0.2.1".into(),
            peer: peer.into(),
            platform: platform.map(str::to_string),
        }
    }

    fn assoc_count(xml: &str) -> usize {
        xml.matches("<participantstreamassoc").count()
    }

    #[test]
    fn a_transfer_keeps_the_agent_listed_with_its_leaving_time() {
        let mut ids = IdGenerator::new(7);
        let start = 1_796_349_600_000;
        let mut metadata = Metadata::new(
            &mut ids,
            "call-1",
            start,
            party("13800138000", "carrier", None),
            party("12345", "hotline", Some("12345")),
        );
        let xml = metadata.to_xml();
        assert!(xml.contains("<datamode>complete</datamode>"));
        assert!(xml.contains("<label>1</label>") && xml.contains("<label>2</label>"));
        assert_eq!(assoc_count(&xml), 2);
        assert!(!xml.contains("disassociate-time"));

        assert!(metadata.linkage(Linkage {
            id: "l1".into(),
            kind: "transfer".into(),
            target: "110".into(),
            outcome: Some("answered".into()),
        }));
        assert!(metadata.joined(
            &mut ids,
            start + 5000,
            1,
            party("110", "police", Some("110"))
        ));
        assert!(!metadata.joined(
            &mut ids,
            start + 6000,
            1,
            party("110", "police", Some("110"))
        ));
        assert!(metadata.ticket("GD-2026-1"));
        assert!(!metadata.ticket("GD-2026-1"));
        let xml = metadata.to_xml();
        assert!(xml.contains(
            "<hl:linkage id=\"l1\" kind=\"transfer\" target=\"110\" outcome=\"answered\"/>"
        ));
        assert!(xml.contains("<hl:ticket>GD-2026-1</hl:ticket>"));
        assert!(xml.contains("aor=\"sip:110@192.0.2.1\""));
        assert!(xml.contains("<disassociate-time>2026-12-04T02:00:05.000Z</disassociate-time>"));
        assert_eq!(
            xml.matches("<participant ").count(),
            3,
            "the agent stays listed"
        );
        assert_eq!(assoc_count(&xml), 2, "only those in the call have streams");
    }

    #[test]
    fn the_citizen_sends_stream_1_and_the_others_stream_2() {
        let mut ids = IdGenerator::new(1);
        let metadata = Metadata::new(
            &mut ids,
            "c",
            0,
            party("139", "carrier", None),
            party("12345", "hotline", None),
        );
        let xml = metadata.to_xml();
        let [said, heard] = &metadata.stream_ids;
        let citizen = &metadata.participants[0].id;
        let agent = &metadata.participants[1].id;
        assert!(xml.contains(&format!(
            "<participantstreamassoc participant_id=\"{citizen}\"><send>{said}</send><recv>{heard}</recv>"
        )));
        assert!(xml.contains(&format!(
            "<participantstreamassoc participant_id=\"{agent}\"><send>{heard}</send><recv>{said}</recv>"
        )));
        assert_eq!(said.len(), 24, "128 bits in base64");
    }

    #[test]
    fn what_peers_sent_is_escaped() {
        assert_eq!(escape("a<b>&\"c'\u{1}"), "a&lt;b&gt;&amp;&quot;c&apos;");
    }
}
