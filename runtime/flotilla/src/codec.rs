//! How values travel: serde with bincode (varint integers, trailing bytes refused), into cheaply
//! cloned [`Bytes`].

use bincode::Options;
use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize};

use crate::{error::Error, registry::TaskFailure};

fn options() -> impl Options {
    bincode::DefaultOptions::new()
}

/// Encodes a value.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Bytes, Error> {
    options()
        .serialize(value)
        .map(Bytes::from)
        .map_err(|e| Error::Codec(format!("cannot encode {}: {e}", std::any::type_name::<T>())))
}

/// Decodes a value; a mismatch between the bytes and `T` is an error naming `T`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    options()
        .deserialize(bytes)
        .map_err(|e| Error::Codec(format!("cannot decode a {}: {e}", std::any::type_name::<T>())))
}

/// Decodes argument `index` of `task`, or says which argument did not fit.
pub fn decode_arg<T: DeserializeOwned>(args: &[Bytes], index: usize, task: &str) -> Result<T, TaskFailure> {
    let bytes = args.get(index).ok_or_else(|| {
        TaskFailure::type_mismatch(format!(
            "{task} takes more arguments than the {} it was given",
            args.len()
        ))
    })?;
    options().deserialize(bytes).map_err(|e| {
        TaskFailure::type_mismatch(format!(
            "argument {} of {task} is not a {}: {e}",
            index + 1,
            std::any::type_name::<T>()
        ))
    })
}
