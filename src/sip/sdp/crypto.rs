//! SDES: the `a=crypto` attribute (RFC 4568 §9.1) that carries SRTP keys in SDP.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use crate::media::srtp::{MasterKey, Suite};

/// One `a=crypto` line we can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Crypto {
    /// Names the line; the answer repeats the tag of the offer's line it takes (§5.1.2).
    pub tag: u32,
    pub suite: Suite,
    pub key: MasterKey,
    /// Length in bytes of the MKI the sender puts in each packet (0: none).
    pub mki_length: u8,
}

impl Crypto {
    /// Reads the value of an attribute (`crypto:1 AES_CM_128_HMAC_SHA1_80 inline:...`). None
    /// for other attributes and for lines we cannot honour: another suite, several keys, a key
    /// derivation rate, or session parameters that turn protection off (§6.3).
    pub fn parse(attribute: &str) -> Option<Crypto> {
        let value = attribute.strip_prefix("crypto:")?;
        let mut fields = value.split_ascii_whitespace();
        let tag = fields
            .next()?
            .parse::<u32>()
            .ok()
            .filter(|t| *t < 1_000_000_000)?;
        let suite = Suite::from_name(fields.next()?)?;
        let key_params = fields.next()?;
        // Session parameters: only the window size hint is harmless to us.
        if fields.any(|p| !p.starts_with("WSH=")) || key_params.contains(';') {
            return None;
        }
        let mut parts = key_params.strip_prefix("inline:")?.split('|');
        let bytes = STANDARD.decode(parts.next()?).ok()?;
        let key = MasterKey(<[u8; 30]>::try_from(bytes.as_slice()).ok()?);
        let mut mki_length = 0;
        for part in parts {
            match part.split_once(':') {
                // MKI:length, the length in bytes (1..=128).
                Some((mki, length)) => {
                    mki.parse::<u64>().ok()?;
                    mki_length = length
                        .parse::<u8>()
                        .ok()
                        .filter(|l| (1..=128).contains(l))?;
                }
                // A lifetime (`2^31` or a number): we never send that many packets on one key.
                None if part.starts_with("2^") || part.parse::<u64>().is_ok() => {}
                None => return None,
            }
        }
        Some(Crypto {
            tag,
            suite,
            key,
            mki_length,
        })
    }

    /// The attribute's value, without MKI or lifetime (the defaults, §6.1).
    pub fn attribute(&self) -> String {
        format!(
            "crypto:{} {} inline:{}",
            self.tag,
            self.suite.name(),
            STANDARD.encode(self.key.0)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rfc_4568s_example_and_writes_it_back() {
        // §9.1's example line, with lifetime and MKI.
        let line = "crypto:1 AES_CM_128_HMAC_SHA1_80 \
                    inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20|1:4";
        let crypto = Crypto::parse(line);
        assert_eq!(
            crypto.map(|c| (c.tag, c.suite, c.mki_length)),
            Some((1, Suite::AesCm128HmacSha1_80, 4))
        );
        assert_eq!(
            crypto.map(|c| c.attribute()).as_deref(),
            Some(
                "crypto:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR"
            )
        );
    }

    #[test]
    fn lines_we_cannot_honour_are_not_taken() {
        let key = "PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR";
        for line in [
            format!("crypto:1 AES_256_CM_HMAC_SHA1_80 inline:{key}"),
            format!("crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{key} UNENCRYPTED_SRTP"),
            format!("crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{key} KDR=10"),
            format!("crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{key};inline:{key}"),
            format!("crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{key}|2^20|1:0"),
            format!("crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{key}|forever"),
            "crypto:1 AES_CM_128_HMAC_SHA1_80 inline:c2hvcnQ=".to_string(),
            format!("crypto:x AES_CM_128_HMAC_SHA1_80 inline:{key}"),
            format!("crypto:1 AES_CM_128_HMAC_SHA1_80 {key}"),
            "crypto:1".to_string(),
            "rtcp-mux".to_string(),
        ] {
            assert_eq!(Crypto::parse(&line), None, "{line}");
        }
        let hinted = format!("crypto:2 AES_CM_128_HMAC_SHA1_32 inline:{key} WSH=128");
        assert_eq!(Crypto::parse(&hinted).map(|c| c.tag), Some(2));
    }
}
