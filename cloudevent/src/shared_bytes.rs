//! Decoding that shares the input's bytes rather than copying them.
//!
//! In: a postcard-encoded value held in a [`Bytes`] (a gRPC message's field, a stored event, a Raft entry read
//! back). Out: the value, whose byte fields marked [`deserialize`] or [`deserialize_vec`] are slices of that
//! input (`Bytes::slice_ref`: a reference count, no copy). serde's own `Bytes` copies every byte field it
//! decodes, so an event's payload was copied once more at each decode (on the follower that receives an entry,
//! for an entry read back from RocksDB, for an event an admin read decodes).
//!
//! The input is handed to the fields through a thread-local set for the duration of one synchronous decode
//! ([`sharing`]); a field decoded outside it, or from bytes that are not the input's, is copied as before. The
//! encoding is serde's `serialize_bytes` either way, so what is on disk and on the wire does not change.
//!
//! A slice keeps its whole input alive, so the callers share only where what holds the slices is bounded (the
//! broker's in-memory tails, an answer being built; `command::decode_shared` says how), never for long-lived
//! small keys and not for events a dispatcher's window may hold for long.

use std::cell::RefCell;
use std::fmt;

use bytes::Bytes;
use serde::Deserializer;
use serde::de::{SeqAccess, Visitor};

thread_local! {
    static INPUT: RefCell<Option<Bytes>> = const { RefCell::new(None) };
}

/// Runs `decode` over `input`'s bytes with `input` offered to the fields that share it.
pub fn sharing<R>(input: &Bytes, decode: impl FnOnce(&[u8]) -> R) -> R {
    /// Puts back what was offered before, also when `decode` panics.
    struct Restore(Option<Bytes>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            INPUT.with(|cell| *cell.borrow_mut() = previous);
        }
    }
    let _restore = Restore(INPUT.with(|cell| cell.replace(Some(input.clone()))));
    decode(input)
}

/// `part` as a slice of the input being decoded when it lies within it; otherwise a copy.
fn share_or_copy(part: &[u8]) -> Bytes {
    INPUT.with(|cell| match &*cell.borrow() {
        Some(input) if lies_within(input, part) => input.slice_ref(part),
        _ => Bytes::copy_from_slice(part),
    })
}

fn lies_within(input: &[u8], part: &[u8]) -> bool {
    let start = input.as_ptr() as usize;
    let at = part.as_ptr() as usize;
    !part.is_empty() && at >= start && at + part.len() <= start + input.len()
}

struct SharedBytesVisitor;

impl<'de> Visitor<'de> for SharedBytesVisitor {
    type Value = Bytes;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("bytes")
    }

    fn visit_borrowed_bytes<E: serde::de::Error>(self, part: &'de [u8]) -> Result<Bytes, E> {
        Ok(share_or_copy(part))
    }

    fn visit_bytes<E: serde::de::Error>(self, part: &[u8]) -> Result<Bytes, E> {
        Ok(Bytes::copy_from_slice(part))
    }

    fn visit_byte_buf<E: serde::de::Error>(self, owned: Vec<u8>) -> Result<Bytes, E> {
        Ok(Bytes::from(owned))
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Bytes, E> {
        Ok(Bytes::copy_from_slice(text.as_bytes()))
    }

    fn visit_string<E: serde::de::Error>(self, text: String) -> Result<Bytes, E> {
        Ok(Bytes::from(text))
    }

    /// Self-describing formats (JSON) write bytes as a list of numbers, as serde's `Bytes` reads them too.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes, A::Error> {
        let mut owned = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(byte) = seq.next_element::<u8>()? {
            owned.push(byte);
        }
        Ok(Bytes::from(owned))
    }
}

/// serde `deserialize_with` for a `Bytes` field: a slice of the input under [`sharing`].
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Bytes, D::Error> {
    // `deserialize_bytes`: postcard lends the input's own bytes to it (`deserialize_byte_buf` lends a temporary).
    deserializer.deserialize_bytes(SharedBytesVisitor)
}

/// One element of a [`deserialize_vec`] list.
struct Shared(Bytes);

impl<'de> serde::Deserialize<'de> for Shared {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize(deserializer).map(Shared)
    }
}

struct SharedListVisitor;

impl<'de> Visitor<'de> for SharedListVisitor {
    type Value = Vec<Bytes>;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a list of bytes")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Bytes>, A::Error> {
        // The hint comes from the input: bounded so that a corrupt length cannot reserve unbounded memory.
        let mut list = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(Shared(bytes)) = seq.next_element()? {
            list.push(bytes);
        }
        Ok(list)
    }
}

/// serde `deserialize_with` for a `Vec<Bytes>` field: each a slice of the input under [`sharing`].
pub fn deserialize_vec<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Bytes>, D::Error> {
    deserializer.deserialize_seq(SharedListVisitor)
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Sample {
        name: String,
        #[serde(deserialize_with = "deserialize")]
        one: Bytes,
        #[serde(deserialize_with = "deserialize_vec")]
        many: Vec<Bytes>,
    }

    fn sample() -> Sample {
        Sample {
            name: "s".into(),
            one: Bytes::from(vec![7u8; 300]),
            many: vec![Bytes::from_static(b"first"), Bytes::new(), Bytes::from(vec![1u8; 1000])],
        }
    }

    fn within(input: &Bytes, part: &Bytes) -> bool {
        lies_within(input, part)
    }

    #[test]
    fn under_sharing_the_fields_are_slices_of_the_input() {
        let input = Bytes::from(postcard::to_allocvec(&sample()).expect("encode"));
        let decoded: Sample = sharing(&input, |bytes| postcard::from_bytes(bytes)).expect("decode");
        assert_eq!(decoded, sample());
        assert!(within(&input, &decoded.one), "the single field shares the input");
        assert!(within(&input, &decoded.many[0]) && within(&input, &decoded.many[2]), "the list's elements too");
        assert!(decoded.many[1].is_empty());
    }

    #[test]
    fn outside_sharing_or_from_other_bytes_the_fields_are_copies() {
        let encoded = postcard::to_allocvec(&sample()).expect("encode");
        let input = Bytes::from(encoded.clone());
        let plain: Sample = postcard::from_bytes(&input).expect("decode");
        assert_eq!(plain, sample());
        assert!(!within(&input, &plain.one), "no input offered: copied");
        // Offered one input but decoding another buffer: never a slice of the wrong one.
        let other = Bytes::from(encoded);
        let crossed: Sample = sharing(&input, |_| postcard::from_bytes(&other)).expect("decode");
        assert_eq!(crossed, sample());
        assert!(!within(&input, &crossed.one) && !within(&other, &crossed.one));
    }

    #[test]
    fn the_offer_ends_with_the_decode_also_after_a_panic() {
        let input = Bytes::from(postcard::to_allocvec(&sample()).expect("encode"));
        let outer: Sample = sharing(&input, |bytes| {
            let inner_input = Bytes::from(postcard::to_allocvec(&sample()).expect("encode"));
            let inner: Sample = sharing(&inner_input, |inner_bytes| postcard::from_bytes(inner_bytes)).expect("inner");
            assert!(within(&inner_input, &inner.one));
            postcard::from_bytes(bytes)
        })
        .expect("decode");
        assert!(within(&input, &outer.one), "the outer input is offered again after a nested decode");
        let caught = std::panic::catch_unwind(|| sharing(&input, |_| panic!("a decode that panics")));
        assert!(caught.is_err());
        INPUT.with(|cell| assert!(cell.borrow().is_none(), "nothing left offered"));
    }

    #[test]
    fn json_reads_what_serdes_bytes_writes() {
        let text = serde_json::to_string(&sample()).expect("json");
        let decoded: Sample = serde_json::from_str(&text).expect("from json");
        assert_eq!(decoded, sample());
    }

    /// A list that claims more elements than memory holds, and has none: the claim reserves at most 4,096.
    struct Claims(usize);

    impl<'de> SeqAccess<'de> for Claims {
        type Error = serde::de::value::Error;

        fn next_element_seed<T: serde::de::DeserializeSeed<'de>>(
            &mut self,
            _seed: T,
        ) -> Result<Option<T::Value>, Self::Error> {
            Ok(None)
        }

        fn size_hint(&self) -> Option<usize> {
            Some(self.0)
        }
    }

    #[test]
    fn a_lists_claimed_length_reserves_a_bounded_room() {
        // Unbounded, `Vec::with_capacity(usize::MAX)` panics ("capacity overflow").
        let list = SharedListVisitor.visit_seq(Claims(usize::MAX)).expect("an empty list");
        assert!(list.is_empty() && list.capacity() <= 4096, "{}", list.capacity());
        let bytes = SharedBytesVisitor.visit_seq(Claims(usize::MAX)).expect("no bytes");
        assert!(bytes.is_empty());
    }
}
