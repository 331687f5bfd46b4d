//! Measures how fast serde codecs encode and decode the values that travel between Flotilla's
//! processes, and how large their encodings are.
//!
//! `cargo run --release -p flotilla --example codec_bench` prints one row per value and codec:
//! nanoseconds per encode and per decode (the fastest of many short timed batches, so that other
//! work on the machine inflates the figures as little as possible) and the encoded size. The
//! runtime's codec is compared with postcard writing into a growing buffer (what sizing first
//! saves) and with bitcode's serde path, the runner-up; `runtime/flotilla/src/codec.rs` quotes
//! the run that chose postcard over bincode and bitcode.

use std::{
    collections::HashMap,
    fmt::Debug,
    hint::black_box,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context};
use bytes::Bytes;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// The shape of a word count's result: the words in order and how often each occurs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct WordCount {
    words: Vec<String>,
    counts: HashMap<String, i64>,
}

/// One codec, used as the runtime uses its own: into [`Bytes`], trailing bytes refused.
trait Codec {
    const NAME: &'static str;
    fn encode<T: Serialize + 'static>(value: &T) -> anyhow::Result<Bytes>;
    fn decode<T: DeserializeOwned + 'static>(bytes: &Bytes) -> anyhow::Result<T>;
}

/// The runtime's own codec: postcard, sized before it writes.
struct Flotilla;

impl Codec for Flotilla {
    const NAME: &'static str = "flotilla::codec";
    fn encode<T: Serialize + 'static>(value: &T) -> anyhow::Result<Bytes> {
        Ok(flotilla::codec::encode(value)?)
    }
    fn decode<T: DeserializeOwned + 'static>(bytes: &Bytes) -> anyhow::Result<T> {
        Ok(flotilla::codec::decode(bytes)?)
    }
}

/// Postcard into a growing `Vec`, as `postcard::to_stdvec` does: what sizing first saves.
struct PostcardGrowing;

impl Codec for PostcardGrowing {
    const NAME: &'static str = "postcard, growing";
    fn encode<T: Serialize + 'static>(value: &T) -> anyhow::Result<Bytes> {
        Ok(postcard::to_extend(value, Vec::new())?.into())
    }
    fn decode<T: DeserializeOwned + 'static>(bytes: &Bytes) -> anyhow::Result<T> {
        let (value, rest) = postcard::take_from_bytes(bytes)?;
        ensure!(rest.is_empty(), "{} trailing bytes", rest.len());
        Ok(value)
    }
}

/// Bitcode through serde, the other maintained serde codec that fits `encode`'s signature.
struct Bitcode;

impl Codec for Bitcode {
    const NAME: &'static str = "bitcode (serde)";
    fn encode<T: Serialize + 'static>(value: &T) -> anyhow::Result<Bytes> {
        Ok(bitcode::serialize(value)?.into())
    }
    fn decode<T: DeserializeOwned + 'static>(bytes: &Bytes) -> anyhow::Result<T> {
        Ok(bitcode::deserialize(bytes)?)
    }
}

/// Timed batches per figure; the fastest one counts.
const BATCHES: usize = 60;
/// Each batch runs the operation at least this long.
const BATCH_TIME: Duration = Duration::from_millis(2);

/// Nanoseconds per call of `op`: the fastest batch's mean.
fn ns_per_op(mut op: impl FnMut()) -> f64 {
    op();
    let once = {
        let start = Instant::now();
        op();
        start.elapsed().max(Duration::from_nanos(1))
    };
    let per_batch = (BATCH_TIME.as_nanos() / once.as_nanos()).clamp(1, 10_000_000) as u32;
    (0..BATCHES)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..per_batch {
                op();
            }
            start.elapsed().as_nanos() as f64 / f64::from(per_batch)
        })
        .fold(f64::INFINITY, f64::min)
}

fn row<C: Codec, T>(label: &str, value: &T) -> anyhow::Result<()>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug + 'static,
{
    let encoded = C::encode(value).with_context(|| format!("{} encoding {label}", C::NAME))?;
    let decoded: T =
        C::decode(&encoded).with_context(|| format!("{} decoding {label}", C::NAME))?;
    ensure!(&decoded == value, "{} does not round-trip {label}", C::NAME);
    let encode_ns = ns_per_op(|| {
        black_box(C::encode(black_box(value)).ok());
    });
    let decode_ns = ns_per_op(|| {
        black_box(C::decode::<T>(black_box(&encoded)).ok());
    });
    println!(
        "| {label:<34} | {:<17} | {:>13.0} | {:>13.0} | {:>10} |",
        C::NAME,
        encode_ns,
        decode_ns,
        encoded.len()
    );
    Ok(())
}

fn rows<T>(label: &str, value: &T) -> anyhow::Result<()>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug + 'static,
{
    row::<Flotilla, T>(label, value)?;
    row::<PostcardGrowing, T>(label, value)?;
    row::<Bitcode, T>(label, value)?;
    Ok(())
}

fn word_count() -> WordCount {
    let words: Vec<String> = (0..10_000).map(|i| format!("word{}", i % 1_000)).collect();
    let mut counts = HashMap::new();
    for w in &words {
        *counts.entry(w.clone()).or_insert(0) += 1;
    }
    WordCount { words, counts }
}

fn main() -> anyhow::Result<()> {
    println!(
        "| {:<34} | {:<17} | {:>13} | {:>13} | {:>10} |",
        "value", "codec", "encode ns", "decode ns", "bytes"
    );
    println!(
        "|{:-<36}|{:-<19}|{:->15}|{:->15}|{:->12}|",
        "", "", "", "", ""
    );
    rows("i64", &-1_234_567_890_123i64)?;
    rows("f64", &std::f64::consts::PI)?;
    rows("args (i64, f64, bool, u32)", &(42i64, 2.5f64, true, 7u32))?;
    rows(
        "String, 100 bytes",
        &"flotilla ".repeat(12)[..100].to_string(),
    )?;
    rows(
        "Vec<f64>, 1,000,000",
        &(0..1_000_000)
            .map(|i| f64::from(i) * 0.5)
            .collect::<Vec<f64>>(),
    )?;
    rows(
        // Through serde, as a `Vec<u8>` travels when it is not a `Blob`.
        "Vec<u8>, 10 MB",
        &(0..10_000_000u32)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>(),
    )?;
    rows("word count, 10,000 words", &word_count())?;
    rows(
        "Option<Result<i64, String>>, Ok",
        &Some(Ok::<i64, String>(1_000_000)),
    )?;
    rows(
        "Option<Result<i64, String>>, Err",
        &Some(Err::<i64, String>("the input was empty".to_string())),
    )?;
    Ok(())
}
