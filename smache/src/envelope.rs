//! The envelope every cached value is stored in.
//!
//! ```text
//! offset  size  field
//! 0       2     magic, b"sm"
//! 2       1     format version (currently 1)
//! 3       1     flags: bit 0 set = a reference: the value is kept in
//!               MongoDB and the payload is its SHA-256 (32 bytes) and
//!               the id of its document (12 bytes)
//! 4       8     computed-at time, Unix milliseconds, little endian
//! 12      …     the value, MessagePack
//! ```
//!
//! The value version (a counter that increases on every write of the key)
//! is kept beside the envelope by the store — in the Redis hash as field
//! `v`, in the embedded store in the entry — because the store, not the
//! writer, assigns it atomically.
//!
//! MessagePack (`rmp-serde`, structs as maps) is the payload encoding: it is
//! several times faster to encode and decode than JSON or BSON and smaller,
//! and unlike positional formats (bincode) it stays correct with every serde
//! attribute (`skip_serializing_if`, `flatten`, untagged enums) and with
//! fields added under `#[serde(default)]`. A fixed binary header lets a
//! reader reject foreign bytes before touching the payload.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};

const MAGIC: &[u8; 2] = b"sm";
/// The envelope format this build writes and reads.
pub(crate) const FORMAT: u8 = 1;
const HEADER: usize = 12;

/// A decoded envelope, borrowing its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Envelope<'a> {
    pub(crate) computed_at_ms: u64,
    /// The payload is a digest, the value is in MongoDB.
    pub(crate) reference: bool,
    pub(crate) payload: &'a [u8],
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Serializes `value` into a new envelope stamped with `computed_at_ms`.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T, computed_at_ms: u64) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(MAGIC);
    out.push(FORMAT);
    out.push(0);
    out.extend_from_slice(&computed_at_ms.to_le_bytes());
    rmp_serde::encode::write_named(&mut out, value).map_err(|err| Error::Serialize {
        what: "value",
        message: err.to_string(),
    })?;
    Ok(out)
}

/// Flag bit 0: the payload is the digest of a value kept in MongoDB.
const REFERENCE: u8 = 1;

/// The reference stored in Redis for a value kept in MongoDB: the same
/// header, flagged; the SHA-256 of the payload (so that comparing two
/// references compares the values); and the 12-byte id of the document.
pub(crate) fn reference(envelope: &[u8], document: [u8; 12]) -> Vec<u8> {
    use sha2::Digest;
    let (header, payload) = envelope.split_at(HEADER.min(envelope.len()));
    let mut out = Vec::with_capacity(HEADER + 32 + 12);
    out.extend_from_slice(header);
    if let Some(flags) = out.get_mut(3) {
        *flags |= REFERENCE;
    }
    out.extend_from_slice(&sha2::Sha256::digest(payload));
    out.extend_from_slice(&document);
    out
}

/// Whether `bytes` is a reference to a value kept in MongoDB.
pub(crate) fn is_reference(bytes: &[u8]) -> bool {
    bytes.len() >= HEADER && &bytes[..2] == MAGIC && bytes[3] & REFERENCE != 0
}

/// The document id in a reference; `None` if `bytes` is not a whole one.
pub(crate) fn referenced_document(bytes: &[u8]) -> Option<[u8; 12]> {
    if !is_reference(bytes) || bytes.len() != HEADER + 32 + 12 {
        return None;
    }
    bytes[HEADER + 32..].try_into().ok()
}

/// Checks the header of `bytes`. Never panics, whatever the input.
pub(crate) fn decode(bytes: &[u8]) -> Result<Envelope<'_>> {
    if bytes.len() < HEADER {
        return Err(Error::Corrupt(format!(
            "{} bytes is shorter than the {HEADER}-byte header",
            bytes.len()
        )));
    }
    if &bytes[..2] != MAGIC {
        return Err(Error::Corrupt("not a smache envelope (bad magic)".into()));
    }
    if bytes[2] != FORMAT {
        return Err(Error::Corrupt(format!(
            "envelope format {} is not {FORMAT}",
            bytes[2]
        )));
    }
    let mut at = [0u8; 8];
    at.copy_from_slice(&bytes[4..HEADER]);
    Ok(Envelope {
        computed_at_ms: u64::from_le_bytes(at),
        reference: bytes[3] & REFERENCE != 0,
        payload: &bytes[HEADER..],
    })
}

impl Envelope<'_> {
    /// Deserializes the payload.
    pub(crate) fn value<T: DeserializeOwned>(&self) -> Result<T> {
        if self.reference {
            return Err(Error::Corrupt(
                "a reference to a value kept in MongoDB, read without it".into(),
            ));
        }
        rmp_serde::from_slice(self.payload)
            .map_err(|err| Error::Corrupt(format!("payload does not decode: {err}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inputs the fuzz target `envelope` found or that once broke the
    /// decoder (one file each in fuzz/regressions/envelope).
    #[test]
    fn fuzz_regressions_of_envelopes_stay_fixed() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions/envelope");
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let bytes = std::fs::read(entry.path()).unwrap();
            if let Ok(envelope) = decode(&bytes) {
                let _ = envelope.value::<serde_json::Value>();
            }
            let _ = referenced_document(&bytes);
        }
    }

    #[test]
    fn references_name_their_document_and_hide_their_payload() {
        let envelope = encode(&"a value", 7).unwrap();
        let reference = reference(&envelope, [9; 12]);
        assert!(is_reference(&reference) && !is_reference(&envelope));
        assert_eq!(referenced_document(&reference), Some([9; 12]));
        assert_eq!(referenced_document(&reference[..50]), None);
        let decoded = decode(&reference).unwrap();
        assert_eq!(decoded.computed_at_ms, 7);
        assert!(
            decoded.value::<String>().is_err(),
            "a reference has no value"
        );
    }
    use serde::Deserialize;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Card {
        name: String,
        #[serde(skip_serializing_if = "Option::is_none", default)]
        nick: Option<String>,
        score: f64,
    }

    #[test]
    fn round_trip() {
        let card = Card {
            name: "Ada".into(),
            nick: None,
            score: 1.5,
        };
        let bytes = encode(&card, 1_700_000_000_123).unwrap();
        let env = decode(&bytes).unwrap();
        assert_eq!(env.computed_at_ms, 1_700_000_000_123);
        assert_eq!(env.value::<Card>().unwrap(), card);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [
            &b""[..],
            b"sm",
            b"hello world, this is not an envelope",
            b"sm\x02\x00\x00\x00\x00\x00\x00\x00\x00\x00",
        ] {
            assert!(matches!(decode(bytes), Err(Error::Corrupt(_))), "{bytes:?}");
        }
        // A valid header over a payload of the wrong type.
        let bytes = encode(&"text", 0).unwrap();
        let err = decode(&bytes).unwrap().value::<Card>().unwrap_err();
        assert!(matches!(err, Error::Corrupt(_)));
        // Truncated payload.
        let bytes = encode(&vec![1u32; 100], 0).unwrap();
        let env = decode(&bytes[..bytes.len() - 5]).unwrap();
        assert!(env.value::<Vec<u32>>().is_err());
    }
}
