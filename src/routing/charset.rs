//! The text encoding a peer writes header text in (`charset` of a `[[peer]]`): peer vocabulary
//! that the SIP message parser applies when it decodes a header line.

/// How a peer encodes header text that is not UTF-8 (`charset` of a `[[peer]]`).
///
/// RFC 3261 §25.1 says UTF-8, but older Chinese PBXs send display names in GBK or GB2312. A
/// header line that is valid UTF-8 is read as UTF-8 whatever the peer's setting; one that is
/// not is decoded in the peer's charset, so the desk sees the caller's name rather than `�`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
pub enum Charset {
    /// Invalid bytes become `?`, one for one: a hostile name cannot grow on its way through.
    #[default]
    #[serde(rename = "utf-8", alias = "utf8", alias = "UTF-8")]
    Utf8,
    /// GB18030, the superset of GBK and GB2312.
    #[serde(
        rename = "gb18030",
        alias = "gbk",
        alias = "gb2312",
        alias = "GB18030",
        alias = "GBK"
    )]
    Gb18030,
}

impl Charset {
    /// `raw` as text: UTF-8 if it is, else decoded in this charset.
    pub fn decode(self, raw: &[u8]) -> std::borrow::Cow<'_, str> {
        if let Ok(text) = std::str::from_utf8(raw) {
            return std::borrow::Cow::Borrowed(text);
        }
        match self {
            Charset::Utf8 => {
                let mut text = String::with_capacity(raw.len());
                for chunk in raw.utf8_chunks() {
                    text.push_str(chunk.valid());
                    text.extend(std::iter::repeat_n('?', chunk.invalid().len()));
                }
                std::borrow::Cow::Owned(text)
            }
            Charset::Gb18030 => {
                let (text, _) = encoding_rs::GB18030.decode_without_bom_handling(raw);
                std::borrow::Cow::Owned(text.into_owned())
            }
        }
    }
}
