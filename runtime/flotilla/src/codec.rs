//! How values travel: serde with postcard (varint integers, trailing bytes refused), into cheaply
//! cloned [`Bytes`]. A top-level [`Blob`] skips serde altogether: its buffer is the encoding, so
//! large byte payloads move from store to store without extra copies.
//!
//! Postcard replaced bincode 1.3, unmaintained since December 2025 (RUSTSEC-2025-0141), after
//! measuring the maintained serde codecs on the values tasks pass and return with
//! `cargo run --release -p flotilla --example codec_bench` (bincode was measured beside them
//! before it went). Nanoseconds per encode / decode, the fastest of four runs of 60 batches on a
//! 2-core machine busy with other builds, and encoded sizes where they differ:
//!
//! | value                          | bincode 1.3        | postcard, as here  | bitcode (serde)    |
//! |--------------------------------|--------------------|--------------------|--------------------|
//! | `i64`                          | 24 / 3, 9 B        | 51 / 6, 6 B        | 140 / 10, 9 B      |
//! | `f64`                          | 20 / 2, 8 B        | 43 / 2, 8 B        | 143 / 10, 9 B      |
//! | `(i64, f64, bool, u32)`        | 31 / 41, 11 B      | 50 / 25, 11 B      | 319 / 178, 14 B    |
//! | `String` of 100 bytes          | 32 / 37            | 68 / 43            | 161 / 48           |
//! | `Vec<f64>`, 1,000,000          | 1.23 / 1.52 ms     | 0.90 / 1.85 ms     | 2.99 / 2.44 ms     |
//! | `Vec<u8>`, 10 MB               | 16.5 / 12.5 ms     | 1.4 / 12.1 ms      | 18.0 / 18.4 ms     |
//! | word count, 10,000 words       | 66 / 512 µs, 88 kB | 89 / 507 µs, 88 kB | 44 / 393 µs, 78 kB |
//! | `Some(Ok::<i64, String>(..))`  | 30 / 25, 7 B       | 63 / 24, 5 B       | 237 / 312, 7 B     |
//! | `Some(Err::<i64, String>(..))` | 32 / 51            | 59 / 55            | 256 / 327          |
//!
//! Postcard decodes about as fast as bincode and encodes large values faster, since [`encode`]
//! sizes the value first and then writes into a buffer of exactly that size; small values take
//! some 20 to 40 ns longer to encode, next to the RPC that carries them. Its wire format is specified and
//! stable across 1.x. Bitcode's serde path is fastest and smallest only on the string-heavy word
//! count; on the small values most calls carry it is 3 to 10 times slower than either, and its
//! release builds report every decoding error as just "bitcode error". `wincode` and `rkyv` are
//! not serde codecs: they need their own traits derived on every argument and result type, which
//! the `T: Serialize` bound of [`encode`] cannot ask for.

use std::any::Any;

use bytes::Bytes;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::error::{Error, TaskFailure};

/// Bytes that travel as they are: as a remote function's argument or result, or in `put`/`get`,
/// a `Blob` is neither copied into nor out of a serialized form. Inside other values it
/// serializes as a byte string.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Blob(pub Bytes);

impl Blob {
    /// The bytes.
    pub fn bytes(&self) -> &Bytes {
        &self.0
    }
}

impl From<Vec<u8>> for Blob {
    fn from(v: Vec<u8>) -> Self {
        Blob(Bytes::from(v))
    }
}

impl From<Bytes> for Blob {
    fn from(b: Bytes) -> Self {
        Blob(b)
    }
}

impl std::ops::Deref for Blob {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl Serialize for Blob {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde_bytes::ByteBuf::deserialize(d).map(|b| Blob(Bytes::from(b.into_vec())))
    }
}

/// Encodes a value.
pub fn encode<T: Serialize + 'static>(value: &T) -> Result<Bytes, Error> {
    if let Some(blob) = (value as &dyn Any).downcast_ref::<Blob>() {
        return Ok(blob.0.clone());
    }
    encode_serde(value)
        .map(Bytes::from)
        .map_err(|e| cannot_encode::<T>(&e))
}

/// Postcard into a buffer of exactly the encoded size: a first pass only counts bytes, so the
/// second writes with no reallocation, and the buffer becomes [`Bytes`] without another one.
fn encode_serde<T: Serialize>(value: &T) -> postcard::Result<Vec<u8>> {
    let size = postcard::serialize_with_flavor(value, postcard::ser_flavors::Size::default())?;
    let mut buffer = vec![0; size];
    // A value whose encoding shrank between the passes must not carry padding, which decoding
    // would refuse as trailing bytes; one that grew fails as overflowing the buffer.
    let used = postcard::to_slice(value, &mut buffer)?.len();
    buffer.truncate(used);
    Ok(buffer)
}

/// The encoded size of a value that is not a [`Blob`] (a Blob's is its length), found by an
/// encoding pass that only counts bytes: to size the buffer [`encode_into`] writes into.
pub fn encoded_len<T: Serialize + 'static>(value: &T) -> Result<usize, Error> {
    if let Some(blob) = (value as &dyn Any).downcast_ref::<Blob>() {
        return Ok(blob.len());
    }
    postcard::serialize_with_flavor(value, postcard::ser_flavors::Size::default())
        .map_err(|e| cannot_encode::<T>(&e))
}

/// Encodes a value into `buffer`, which must be exactly [`encoded_len`] bytes long: a large
/// value goes straight into the shared memory it is stored in, with no buffer in between.
pub fn encode_into<T: Serialize + 'static>(value: &T, buffer: &mut [u8]) -> Result<(), Error> {
    if let Some(blob) = (value as &dyn Any).downcast_ref::<Blob>() {
        if blob.len() != buffer.len() {
            return Err(cannot_encode::<T>(&"the buffer is not the blob's size"));
        }
        copy_wide(buffer, blob);
        return Ok(());
    }
    let len = buffer.len();
    let used = postcard::to_slice(value, buffer)
        .map_err(|e| cannot_encode::<T>(&e))?
        .len();
    if used != len {
        // Decoding would refuse the padding after a value that shrank between the passes.
        return Err(cannot_encode::<T>(&format!(
            "it took {used} bytes, not the {len} it measured"
        )));
    }
    Ok(())
}

/// Copies `src` into `dst` (of the same length). A large copy is split over up to four threads:
/// one core's copy falls short of what memory can take (8.7 GB/s into warm shared pages here,
/// 12–18 GB/s with two threads).
pub(crate) fn copy_wide(dst: &mut [u8], src: &[u8]) {
    /// Below this, starting a thread costs more than it saves.
    const SPLIT_FROM: usize = 8 << 20;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    if src.len() < SPLIT_FROM || threads < 2 {
        dst.copy_from_slice(src);
        return;
    }
    // Whole pages per thread, so no two threads write into one page.
    let part = src.len().div_ceil(threads).next_multiple_of(4096);
    std::thread::scope(|scope| {
        let mut parts = dst.chunks_mut(part).zip(src.chunks(part));
        let first = parts.next();
        for (d, s) in parts {
            scope.spawn(move || d.copy_from_slice(s));
        }
        if let Some((d, s)) = first {
            d.copy_from_slice(s);
        }
    });
}

fn cannot_encode<T>(e: &dyn std::fmt::Display) -> Error {
    Error::Codec(format!("cannot encode {}: {e}", std::any::type_name::<T>()))
}

fn decode_raw<T: DeserializeOwned + 'static>(bytes: &Bytes) -> Result<T, String> {
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<Blob>() {
        let blob: Box<dyn Any> = Box::new(Blob(bytes.clone()));
        return Ok(*blob
            .downcast::<T>()
            .expect("T is Blob: the type ids are equal"));
    }
    let (value, rest) = postcard::take_from_bytes(bytes).map_err(|e| e.to_string())?;
    if !rest.is_empty() {
        // Bytes left over mean the value was encoded as another type that merely starts alike.
        return Err(format!("{} bytes follow the value", rest.len()));
    }
    Ok(value)
}

/// Decodes a value; a mismatch between the bytes and `T` is an error naming `T`.
pub fn decode<T: DeserializeOwned + 'static>(bytes: &Bytes) -> Result<T, Error> {
    decode_raw(bytes).map_err(|e| {
        Error::Codec(format!(
            "cannot decode a {}: {e}",
            std::any::type_name::<T>()
        ))
    })
}

/// Decodes argument `index` of `task`, or says which argument did not fit.
pub fn decode_arg<T: DeserializeOwned + 'static>(
    args: &[Bytes],
    index: usize,
    task: &str,
) -> Result<T, TaskFailure> {
    let bytes = args.get(index).ok_or_else(|| {
        TaskFailure::type_mismatch(format!(
            "{task} takes more arguments than the {} it was given",
            args.len()
        ))
    })?;
    decode_raw(bytes).map_err(|e| {
        TaskFailure::type_mismatch(format!(
            "argument {} of {task} is not a {}: {e}",
            index + 1,
            std::any::type_name::<T>()
        ))
    })
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, fmt::Debug};

    use super::*;

    #[test]
    fn a_wide_copy_copies_every_byte_whatever_the_split() {
        // Below the split, at it, and above it by a length no page or thread count divides.
        for len in [0, 4097, 8 << 20, (8 << 20) * 3 + 12_345] {
            let src: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut dst = vec![0u8; len];
            copy_wide(&mut dst, &src);
            assert!(dst == src, "{len} bytes");
        }
        let blob = Blob::from(
            (0..(9usize << 20))
                .map(|i| (i % 13) as u8)
                .collect::<Vec<_>>(),
        );
        let mut buffer = vec![0u8; blob.len()];
        encode_into(&blob, &mut buffer).unwrap();
        assert!(buffer[..] == blob[..]);
    }

    #[test]
    fn blobs_travel_as_their_own_bytes_and_other_values_through_postcard() {
        let blob = Blob::from(vec![1u8, 2, 3]);
        let encoded = encode(&blob).unwrap();
        assert_eq!(&encoded[..], &[1, 2, 3]);
        assert_eq!(encoded.as_ptr(), blob.0.as_ptr(), "no copy");
        assert_eq!(decode::<Blob>(&encoded).unwrap(), blob);
        // Nested, a blob is a byte string.
        let pair = (7u32, blob.clone());
        let back: (u32, Blob) = decode(&encode(&pair).unwrap()).unwrap();
        assert_eq!(back, pair);
        let n = encode(&300u64).unwrap();
        assert_eq!(decode::<u64>(&n).unwrap(), 300);
        assert!(decode::<u64>(&Bytes::from_static(b"")).is_err());
        let err = decode_arg::<String>(&[n], 0, "f").unwrap_err();
        assert!(err.message.contains("argument 1 of f"), "{}", err.message);
    }

    /// Encodes and decodes `value`, and checks that the encoding is exactly `size` bytes long.
    fn round_trip<T>(value: &T, size: usize)
    where
        T: Serialize + DeserializeOwned + PartialEq + Debug + 'static,
    {
        let encoded = encode(value).unwrap();
        assert_eq!(encoded.len(), size, "{}", std::any::type_name::<T>());
        assert_eq!(&decode::<T>(&encoded).unwrap(), value);
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct WordCount {
        words: Vec<String>,
        counts: HashMap<String, i64>,
    }

    #[test]
    fn the_runtimes_values_round_trip() {
        // Integers are varints (zigzag for signed ones); floats take their 4 or 8 bytes.
        round_trip(&0i64, 1);
        round_trip(&-1_234_567_890_123i64, 6);
        round_trip(&i64::MIN, 10);
        round_trip(&u64::MAX, 10);
        round_trip(&std::f64::consts::PI, 8);
        round_trip(&(42i64, 2.5f64, true, 7u32), 1 + 8 + 1 + 1);
        round_trip(&"x".repeat(100), 1 + 100);
        round_trip(&(), 0);

        let floats: Vec<f64> = (0..1_000_000).map(|i| f64::from(i) * 0.5).collect();
        round_trip(&floats, 3 + 8_000_000);
        // Not a `Blob`: through serde, one byte per element after the length.
        let bytes: Vec<u8> = (0..10_000_000u32).map(|i| (i % 251) as u8).collect();
        round_trip(&bytes, 4 + 10_000_000);

        let words: Vec<String> = ["to", "be", "or", "not", "to", "be"]
            .map(String::from)
            .into();
        let mut counts = HashMap::new();
        for w in &words {
            *counts.entry(w.clone()).or_insert(0i64) += 1;
        }
        let count = WordCount { words, counts };
        let encoded = encode(&count).unwrap();
        assert_eq!(decode::<WordCount>(&encoded).unwrap(), count);

        round_trip(&Some(Ok::<i64, String>(1_000_000)), 1 + 1 + 3);
        round_trip(&Some(Err::<i64, String>("empty".into())), 1 + 1 + 1 + 5);
        round_trip(&None::<Result<i64, String>>, 1);
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = encode(&300u64).unwrap().to_vec();
        bytes.push(0);
        let err = decode::<u64>(&Bytes::from(bytes)).unwrap_err().to_string();
        assert!(err.contains("cannot decode a u64"), "{err}");
        assert!(err.contains("1 bytes follow the value"), "{err}");

        // A pair's first half is a whole value of its own, but not all of the pair.
        let pair = encode(&(5u8, 6u8)).unwrap();
        assert!(decode::<u8>(&pair).is_err());
        let err = decode_arg::<u8>(&[pair], 0, "f").unwrap_err();
        assert_eq!(err.kind, crate::error::ErrorKind::TypeMismatch);
        assert!(
            err.message.contains("argument 1 of f is not a u8"),
            "{}",
            err.message
        );
    }

    #[test]
    fn a_type_mismatch_is_an_error_naming_the_expected_type() {
        let text = encode(&"not a number at all".to_string()).unwrap();
        let err = decode::<i64>(&text).unwrap_err().to_string();
        assert!(err.contains("cannot decode a i64"), "{err}");

        // A short length prefix: the string runs past the end.
        let err = decode::<String>(&encode(&7u8).unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cannot decode a alloc::string::String"),
            "{err}"
        );

        // Neither 0 nor 1 is no bool, and a string that is no UTF-8 is no `String`.
        assert!(decode::<bool>(&encode(&2u8).unwrap()).is_err());
        assert!(decode::<String>(&encode(&vec![2u8, 0xff, 0xfe]).unwrap()).is_err());

        // A length far beyond the bytes there are fails without reserving room for it.
        let huge = encode(&u64::MAX).unwrap();
        let err = decode::<Vec<f64>>(&huge).unwrap_err().to_string();
        assert!(
            err.contains("cannot decode a alloc::vec::Vec<f64>"),
            "{err}"
        );

        let err = decode_arg::<Vec<String>>(&[text], 0, "g").unwrap_err();
        assert_eq!(err.kind, crate::error::ErrorKind::TypeMismatch);
        assert!(
            err.message
                .contains("argument 1 of g is not a alloc::vec::Vec<alloc::string::String>"),
            "{}",
            err.message
        );
        let missing = decode_arg::<i64>(&[], 0, "g").unwrap_err();
        assert!(
            missing
                .message
                .contains("g takes more arguments than the 0"),
            "{}",
            missing.message
        );
    }

    /// A sequence whose length is not known until it has been walked.
    struct Unsized;

    impl Serialize for Unsized {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq((0..10u8).filter(|n| n % 2 == 0))
        }
    }

    #[test]
    fn a_value_that_cannot_be_encoded_is_an_error_naming_its_type() {
        let err = encode(&Unsized).unwrap_err().to_string();
        assert!(err.contains("cannot encode"), "{err}");
        assert!(err.contains("Unsized"), "{err}");
        let err = encoded_len(&Unsized).unwrap_err().to_string();
        assert!(err.contains("Unsized"), "{err}");
    }

    #[test]
    fn values_encode_in_place_into_a_buffer_of_their_measured_size() {
        let value = (7u32, "in place".to_string(), vec![1.5f64; 1000]);
        let len = encoded_len(&value).unwrap();
        let mut buffer = vec![0xAA; len];
        encode_into(&value, &mut buffer).unwrap();
        assert_eq!(&buffer[..], &encode(&value).unwrap()[..]);
        assert_eq!(
            decode::<(u32, String, Vec<f64>)>(&Bytes::from(buffer)).unwrap(),
            value
        );
        // Too short or too long a buffer is an error, never a truncated or padded value.
        assert!(encode_into(&value, &mut vec![0; len - 1]).is_err());
        assert!(encode_into(&value, &mut vec![0; len + 1]).is_err());

        let blob = Blob::from(vec![5u8; 300]);
        assert_eq!(encoded_len(&blob).unwrap(), 300);
        let mut buffer = vec![0; 300];
        encode_into(&blob, &mut buffer).unwrap();
        assert_eq!(&buffer[..], &blob[..]);
        assert!(encode_into(&blob, &mut [0; 299]).is_err());
    }
}
