//! How values travel: serde with bincode (varint integers, trailing bytes refused), into cheaply
//! cloned [`Bytes`]. A top-level [`Blob`] skips serde altogether: its buffer is the encoding, so
//! large byte payloads move from store to store without extra copies.

use std::any::Any;

use bincode::Options;
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

fn options() -> impl Options {
    bincode::DefaultOptions::new()
}

/// Encodes a value.
pub fn encode<T: Serialize + 'static>(value: &T) -> Result<Bytes, Error> {
    if let Some(blob) = (value as &dyn Any).downcast_ref::<Blob>() {
        return Ok(blob.0.clone());
    }
    options()
        .serialize(value)
        .map(Bytes::from)
        .map_err(|e| Error::Codec(format!("cannot encode {}: {e}", std::any::type_name::<T>())))
}

fn decode_raw<T: DeserializeOwned + 'static>(bytes: &Bytes) -> Result<T, String> {
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<Blob>() {
        let blob: Box<dyn Any> = Box::new(Blob(bytes.clone()));
        return Ok(*blob
            .downcast::<T>()
            .expect("T is Blob: the type ids are equal"));
    }
    options().deserialize(bytes).map_err(|e| e.to_string())
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
    use super::*;

    #[test]
    fn blobs_travel_as_their_own_bytes_and_other_values_through_bincode() {
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
}
