//! Chunked two-dimensional arrays of `f64` on `ndarray`: a grid of blocks, each described by an
//! expression (generated on a worker from a seed, a constant, a range, or a block stored in the
//! cluster, then elementwise operations and slices). A result runs one task per block that
//! evaluates its whole expression, then materializes the block or reduces it to partials.

use std::{collections::BTreeMap, sync::Arc};

use arrow_buffer::{Buffer, ScalarBuffer};
use bytes::Bytes;
use ndarray::{s, Array1, Array2, ArrayView2, Axis};
use serde::{Deserialize, Serialize};

use super::{
    blocking, call,
    combine::{self, Combine},
    dataframe::{merge_moments, MergeMoments, Moments},
    invalid, plan, progress, Agg,
};
use crate::{
    codec::{self, Blob},
    driver::{object_ref::ObjectRef, Runtime},
    error::Result,
    registry::{Invocation, Remote, RemoteFunction, TaskContext},
};

/// An elementwise binary operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
    /// `powf`
    Pow,
}

impl Op {
    fn apply(self, a: f64, b: f64) -> f64 {
        match self {
            Op::Add => a + b,
            Op::Sub => a - b,
            Op::Mul => a * b,
            Op::Div => a / b,
            Op::Pow => a.powf(b),
        }
    }
}

/// An elementwise function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Func {
    /// Square root.
    Sqrt,
    /// `e^x`.
    Exp,
    /// Natural logarithm.
    Ln,
    /// Absolute value.
    Abs,
    /// Sine.
    Sin,
    /// Cosine.
    Cos,
    /// Negation.
    Neg,
}

impl Func {
    fn apply(self, x: f64) -> f64 {
        match self {
            Func::Sqrt => x.sqrt(),
            Func::Exp => x.exp(),
            Func::Ln => x.ln(),
            Func::Abs => x.abs(),
            Func::Sin => x.sin(),
            Func::Cos => x.cos(),
            Func::Neg => -x,
        }
    }
}

/// How one block's values come about.
#[derive(Clone, Debug, Serialize, Deserialize)]
enum Block {
    /// Uniform in [0, 1) from a seed.
    Random { seed: u64, rows: usize, cols: usize },
    /// One value everywhere.
    Fill {
        value: f64,
        rows: usize,
        cols: usize,
    },
    /// `start + row * stride + col`: a block of a row-major range.
    Range {
        start: f64,
        stride: f64,
        rows: usize,
        cols: usize,
    },
    /// The task's input number `i` (a stored block).
    Input(usize),
    /// A window of a block: rows `r0..r1`, columns `c0..c1`.
    Slice(Box<Block>, [usize; 4]),
    /// A block and a scalar (`scalar_first`: the scalar is the left operand).
    Scalar {
        block: Box<Block>,
        op: Op,
        value: f64,
        scalar_first: bool,
    },
    /// Two blocks of one shape.
    Both(Box<Block>, Op, Box<Block>),
    /// A function of each element.
    Map(Func, Box<Block>),
}

impl Block {
    fn shift_inputs(self, by: usize) -> Block {
        match self {
            Block::Input(i) => Block::Input(i + by),
            Block::Slice(b, w) => Block::Slice(Box::new(b.shift_inputs(by)), w),
            Block::Scalar {
                block,
                op,
                value,
                scalar_first,
            } => Block::Scalar {
                block: Box::new(block.shift_inputs(by)),
                op,
                value,
                scalar_first,
            },
            Block::Both(a, op, b) => Block::Both(
                Box::new(a.shift_inputs(by)),
                op,
                Box::new(b.shift_inputs(by)),
            ),
            Block::Map(f, b) => Block::Map(f, Box::new(b.shift_inputs(by))),
            other => other,
        }
    }

    fn eval(&self, inputs: &[Stored]) -> Result<Array2<f64>> {
        Ok(match self {
            Block::Random { seed, rows, cols } => {
                let mut values = vec![0.0; rows * cols];
                Uniform::new(*seed).fill(&mut values);
                Array2::from_shape_vec((*rows, *cols), values)
                    .map_err(|e| invalid(e.to_string()))?
            }
            Block::Fill { value, rows, cols } => Array2::from_elem((*rows, *cols), *value),
            Block::Range {
                start,
                stride,
                rows,
                cols,
            } => Array2::from_shape_fn((*rows, *cols), |(r, c)| {
                start + r as f64 * stride + c as f64
            }),
            Block::Input(i) => inputs
                .get(*i)
                .ok_or_else(|| invalid("an array block lost an input"))?
                .view()?
                .to_owned(),
            Block::Slice(b, [r0, r1, c0, c1]) => {
                b.eval(inputs)?.slice(s![*r0..*r1, *c0..*c1]).to_owned()
            }
            Block::Scalar {
                block,
                op,
                value,
                scalar_first,
            } => {
                let mut a = block.eval(inputs)?;
                if *scalar_first {
                    a.mapv_inplace(|x| op.apply(*value, x));
                } else {
                    a.mapv_inplace(|x| op.apply(x, *value));
                }
                a
            }
            Block::Both(a, op, b) => {
                let mut x = a.eval(inputs)?;
                let y = b.eval(inputs)?;
                x.zip_mut_with(&y, |p, q| *p = op.apply(*p, *q));
                x
            }
            Block::Map(f, b) => {
                let mut a = b.eval(inputs)?;
                a.mapv_inplace(|x| f.apply(x));
                a
            }
        })
    }
}

/// One block of an array: its expression and the stored blocks it reads.
#[derive(Clone)]
struct Cell {
    block: Block,
    inputs: Vec<ObjectRef<Blob>>,
}

/// What a block's task returns.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
enum Action {
    /// The block (see [`encode_block`]).
    Materialize,
    /// Moments of all values (`Vec<Moments>` of one), or per column (axis 0) or row (axis 1).
    Reduce { axis: Option<usize>, agg: Agg },
}

#[derive(Serialize, Deserialize)]
struct BlockTask {
    block: Block,
    action: Action,
}

const BLOCK: &str = "flotilla::collections::array::block";

inventory::submit! {
    RemoteFunction {
        name: BLOCK,
        signature: super::VARIADIC,
        invoke: invoke_block,
        takes_runtime: false,
    }
}

fn invoke_block(args: Vec<Bytes>, _ctx: TaskContext) -> Invocation {
    blocking(move || run_block(&args))
}

fn run_block(args: &[Bytes]) -> Result<Bytes> {
    let task: BlockTask = plan(args)?;
    let inputs = args[1..]
        .iter()
        .map(Stored::new)
        .collect::<Result<Vec<_>>>()?;
    if let Action::Reduce { axis: None, agg } = task.action {
        match &task.block {
            // Random values summed as they are drawn: no block in memory (a blockwise fusion
            // of generation and reduction, as Dask's graph optimization does).
            Block::Random { seed, rows, cols }
                if matches!(agg, Agg::Sum | Agg::Mean | Agg::Count) =>
            {
                return codec::encode(&vec![Uniform::new(*seed).sum(rows * cols)]);
            }
            // A stored block reduced where it lies: its values are read in place.
            Block::Input(i) => {
                let stored = inputs
                    .get(*i)
                    .ok_or_else(|| invalid("an array block lost an input"))?;
                return codec::encode(&vec![reduce_slice(&stored.values, agg)]);
            }
            _ => {}
        }
    }
    let a = task.block.eval(&inputs)?;
    match task.action {
        Action::Materialize => Ok(encode_block(a.view()).0),
        Action::Reduce { axis: None, agg } => match a.as_slice() {
            Some(values) => codec::encode(&vec![reduce_slice(values, agg)]),
            None => codec::encode(&moments(&a, None, agg == Agg::Std)),
        },
        Action::Reduce { axis, agg } => codec::encode(&moments(&a, axis, agg == Agg::Std)),
    }
}

/// Streams of [`Uniform`], drawn side by side.
const STREAMS: usize = 8;

/// The generator of [`Array::random`]: eight xoshiro256+ streams, seeded from the block's seed
/// by SplitMix64 (as their authors advise); value `i` of a block, in row-major order, comes
/// from stream `i % 8`, as `(x >> 12) · 2⁻⁵²`, a multiple of 2⁻⁵² in [0, 1). Eight streams side
/// by side are two AVX2 registers a step (the sum below uses them when the processor has AVX2);
/// the same seed gives the same block on any machine.
struct Uniform {
    /// `s[word][stream]`: the streams' states, word by word.
    s: [[u64; STREAMS]; 4],
}

impl Uniform {
    fn new(seed: u64) -> Uniform {
        let mut z = seed;
        let mut next = || {
            z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            x ^ (x >> 31)
        };
        let mut s = [[0; STREAMS]; 4];
        for stream in 0..STREAMS {
            for word in &mut s {
                word[stream] = next();
            }
        }
        Uniform { s }
    }

    /// The next value of each stream, as 52-bit integers (the value times 2⁵²).
    #[inline(always)]
    fn next_all(&mut self) -> [u64; STREAMS] {
        let [s0, s1, s2, s3] = &mut self.s;
        let mut out = [0; STREAMS];
        for l in 0..STREAMS {
            out[l] = s0[l].wrapping_add(s3[l]) >> 12;
            let t = s1[l] << 17;
            s2[l] ^= s0[l];
            s3[l] ^= s1[l];
            s1[l] ^= s2[l];
            s0[l] ^= s3[l];
            s2[l] ^= t;
            s3[l] = s3[l].rotate_left(45);
        }
        out
    }

    /// Fills `values` in order.
    fn fill(&mut self, values: &mut [f64]) {
        const SCALE: f64 = 1.0 / (1u64 << 52) as f64;
        let mut chunks = values.chunks_exact_mut(STREAMS);
        for c in &mut chunks {
            let r = self.next_all();
            for (v, x) in c.iter_mut().zip(r) {
                *v = x as f64 * SCALE;
            }
        }
        let rest = chunks.into_remainder();
        let r = self.next_all();
        for (v, x) in rest.iter_mut().zip(r) {
            *v = x as f64 * SCALE;
        }
    }

    /// The count and sum of the next `n` values, as [`Uniform::fill`] would give them. The
    /// values are summed as integers, exactly (so the sum is the exact sum, rounded once).
    #[allow(unsafe_code)]
    fn sum(&mut self, n: usize) -> Moments {
        let whole = n / STREAMS;
        #[cfg(target_arch = "x86_64")]
        let total = if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the processor has AVX2, which the function is compiled for.
            unsafe { self.sum_avx2(whole) }
        } else {
            self.sum_scalar(whole)
        };
        #[cfg(not(target_arch = "x86_64"))]
        let total = self.sum_scalar(whole);
        let r = self.next_all();
        let total = total + r[..n % STREAMS].iter().map(|&x| x as u128).sum::<u128>();
        Moments {
            count: n as u64,
            sum: total as f64 / (1u64 << 52) as f64,
            ..Moments::default()
        }
    }

    /// The sum of the next `steps` values of every stream, as 52-bit integers.
    fn sum_scalar(&mut self, steps: usize) -> u128 {
        let mut total: u128 = 0;
        let mut left = steps;
        while left > 0 {
            let step = left.min(FLUSH);
            let mut lanes = [0u64; STREAMS];
            for _ in 0..step {
                let r = self.next_all();
                for l in 0..STREAMS {
                    lanes[l] += r[l];
                }
            }
            total += lanes.iter().map(|&x| x as u128).sum::<u128>();
            left -= step;
        }
        total
    }

    /// [`Uniform::sum_scalar`] with the eight streams in two AVX2 registers a word: the same
    /// operations, four streams at a time.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    #[allow(unsafe_code)]
    fn sum_avx2(&mut self, steps: usize) -> u128 {
        use std::arch::x86_64::{
            __m256i, _mm256_add_epi64, _mm256_or_si256, _mm256_setzero_si256, _mm256_slli_epi64,
            _mm256_srli_epi64, _mm256_xor_si256,
        };
        // SAFETY (both): four u64 and an __m256i are 32 bytes, and every bit pattern is valid
        // for each.
        let get = |w: &[u64; STREAMS], half: usize| -> __m256i {
            let lanes: [u64; 4] = w[4 * half..4 * half + 4].try_into().expect("4 lanes");
            unsafe { std::mem::transmute::<[u64; 4], __m256i>(lanes) }
        };
        let put =
            |v: __m256i| -> [u64; 4] { unsafe { std::mem::transmute::<__m256i, [u64; 4]>(v) } };
        let mut total: u128 = 0;
        for half in 0..2 {
            let (mut s0, mut s1, mut s2, mut s3) = (
                get(&self.s[0], half),
                get(&self.s[1], half),
                get(&self.s[2], half),
                get(&self.s[3], half),
            );
            let mut left = steps;
            while left > 0 {
                let step = left.min(FLUSH);
                let mut acc = _mm256_setzero_si256();
                for _ in 0..step {
                    acc = _mm256_add_epi64(acc, _mm256_srli_epi64::<12>(_mm256_add_epi64(s0, s3)));
                    let t = _mm256_slli_epi64::<17>(s1);
                    s2 = _mm256_xor_si256(s2, s0);
                    s3 = _mm256_xor_si256(s3, s1);
                    s1 = _mm256_xor_si256(s1, s2);
                    s0 = _mm256_xor_si256(s0, s3);
                    s2 = _mm256_xor_si256(s2, t);
                    s3 = _mm256_or_si256(_mm256_slli_epi64::<45>(s3), _mm256_srli_epi64::<19>(s3));
                }
                total += put(acc).iter().map(|&x| x as u128).sum::<u128>();
                left -= step;
            }
            for (word, v) in self.s.iter_mut().zip([s0, s1, s2, s3]) {
                word[4 * half..4 * half + 4].copy_from_slice(&put(v));
            }
        }
        total
    }
}

/// Values [`Uniform`] adds in a u64 lane before carrying them into a u128: 2¹¹ values of 52
/// bits cannot overflow it.
const FLUSH: usize = 1 << 11;

/// The moments `agg` needs of contiguous values: sums in four lanes, extremes only for min
/// and max, squared deviations only for std.
fn reduce_slice(values: &[f64], agg: Agg) -> Moments {
    if values.is_empty() {
        return Moments::default();
    }
    let mut lanes = [0.0f64; 4];
    let chunks = values.chunks_exact(4);
    let rest: f64 = chunks.remainder().iter().sum();
    for c in chunks {
        for (lane, x) in lanes.iter_mut().zip(c) {
            *lane += x;
        }
    }
    let sum = lanes.iter().sum::<f64>() + rest;
    let count = values.len() as u64;
    let (min, max) = if matches!(agg, Agg::Min | Agg::Max) {
        values
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
                (lo.min(x), hi.max(x))
            })
    } else {
        (f64::INFINITY, f64::NEG_INFINITY)
    };
    let m2 = if agg == Agg::Std {
        let mean = sum / count as f64;
        values.iter().map(|x| (x - mean) * (x - mean)).sum()
    } else {
        0.0
    };
    Moments {
        count,
        sum,
        min,
        max,
        m2,
    }
}

fn moments(a: &Array2<f64>, axis: Option<usize>, spread: bool) -> Vec<Moments> {
    let of = |values: &mut dyn Iterator<Item = f64>| -> Moments {
        let (mut count, mut sum, mut min, mut max) = (0u64, 0.0, f64::INFINITY, f64::NEG_INFINITY);
        let mut all = Vec::new();
        for x in values {
            count += 1;
            sum += x;
            min = min.min(x);
            max = max.max(x);
            if spread {
                all.push(x);
            }
        }
        let m2 = if spread && count > 0 {
            let mean = sum / count as f64;
            all.iter().map(|x| (x - mean) * (x - mean)).sum()
        } else {
            0.0
        };
        if count == 0 {
            return Moments::default();
        }
        Moments {
            count,
            sum,
            min,
            max,
            m2,
        }
    };
    match axis {
        None => vec![of(&mut a.iter().copied())],
        Some(ax) => a
            .axis_iter(Axis(1 - ax))
            .map(|lane| of(&mut lane.iter().copied()))
            .collect(),
    }
}

/// A block as bytes: rows and columns (u64, little-endian), then the values row by row
/// (little-endian `f64`).
pub fn encode_block(a: ArrayView2<f64>) -> Blob {
    let mut out = vec![0; block_len(a.dim())];
    write_block(a, &mut out);
    Blob::from(out)
}

/// The bytes of a block of `dim`.
fn block_len((rows, cols): (usize, usize)) -> usize {
    16 + rows * cols * 8
}

/// Writes a block in [`encode_block`]'s format into `out` (of [`block_len`] bytes).
fn write_block(a: ArrayView2<f64>, out: &mut [u8]) {
    let (rows, cols) = a.dim();
    out[0..8].copy_from_slice(&(rows as u64).to_le_bytes());
    out[8..16].copy_from_slice(&(cols as u64).to_le_bytes());
    for (row, dst) in a
        .rows()
        .into_iter()
        .zip(out[16..].chunks_exact_mut(cols * 8))
    {
        for (x, d) in row.iter().zip(dst.chunks_exact_mut(8)) {
            d.copy_from_slice(&x.to_le_bytes());
        }
    }
}

/// A stored block as a task reads it: the values in place in the object's bytes (mapped
/// shared memory on the block's host) when they are aligned, else copied once.
struct Stored {
    rows: usize,
    cols: usize,
    values: ScalarBuffer<f64>,
}

impl Stored {
    fn new(bytes: &Bytes) -> Result<Stored> {
        let bad = || invalid("an array block is not in the block format");
        if bytes.len() < 16 {
            return Err(bad());
        }
        let rows = u64::from_le_bytes(bytes[0..8].try_into().expect("8 bytes")) as usize;
        let cols = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")) as usize;
        let n = rows.checked_mul(cols).ok_or_else(bad)?;
        if bytes.len() != block_len((rows, cols)) {
            return Err(bad());
        }
        let aligned = bytes[16..]
            .as_ptr()
            .align_offset(std::mem::align_of::<f64>())
            == 0;
        let values = if aligned && cfg!(target_endian = "little") {
            ScalarBuffer::new(Buffer::from(bytes.clone()), 16 / 8, n)
        } else {
            bytes[16..]
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect()
        };
        Ok(Stored { rows, cols, values })
    }

    fn view(&self) -> Result<ArrayView2<'_, f64>> {
        ArrayView2::from_shape((self.rows, self.cols), &self.values)
            .map_err(|e| invalid(e.to_string()))
    }
}

/// A block from its bytes.
pub fn decode_block(bytes: &Bytes) -> Result<Array2<f64>> {
    Ok(Stored::new(bytes)?.view()?.to_owned())
}

/// A chunked 2-D array of `f64`.
#[derive(Clone)]
pub struct Array {
    rt: Runtime,
    shape: (usize, usize),
    /// Row and column boundaries of the blocks: `rows[i]..rows[i + 1]`.
    row_cuts: Arc<Vec<usize>>,
    col_cuts: Arc<Vec<usize>>,
    /// Row-major grid of blocks.
    cells: Vec<Cell>,
}

impl std::fmt::Debug for Array {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Array(shape {:?}, {}×{} blocks)",
            self.shape,
            self.row_cuts.len() - 1,
            self.col_cuts.len() - 1
        )
    }
}

fn cuts(len: usize, chunk: usize) -> Result<Vec<usize>> {
    if chunk == 0 {
        return Err(invalid("a chunk size must be at least 1"));
    }
    let mut v: Vec<usize> = (0..len).step_by(chunk).collect();
    v.push(len);
    if len == 0 {
        v = vec![0, 0];
    }
    Ok(v)
}

/// How many blocks [`Array::from_ndarray`] puts at a time: each put waits on a round trip to
/// the head and one to the worker that maps it, so a few overlap those waits.
const PUTS_AT_ONCE: usize = 8;

/// A seed per block from the array's seed (SplitMix64), so each block is reproducible alone.
fn block_seed(seed: u64, index: u64) -> u64 {
    let mut z = seed.wrapping_add(index.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Array {
    fn generated(
        rt: &Runtime,
        shape: (usize, usize),
        chunks: (usize, usize),
        make: impl Fn(usize, (usize, usize), (usize, usize)) -> Block,
    ) -> Result<Array> {
        let (rc, cc) = (cuts(shape.0, chunks.0)?, cuts(shape.1, chunks.1)?);
        let mut cells = Vec::new();
        for i in 0..rc.len() - 1 {
            for j in 0..cc.len() - 1 {
                let origin = (rc[i], cc[j]);
                let size = (rc[i + 1] - rc[i], cc[j + 1] - cc[j]);
                cells.push(Cell {
                    block: make(cells.len(), origin, size),
                    inputs: Vec::new(),
                });
            }
        }
        Ok(Array {
            rt: rt.clone(),
            shape,
            row_cuts: Arc::new(rc),
            col_cuts: Arc::new(cc),
            cells,
        })
    }

    /// Uniform random values in [0, 1): each block generated on a worker from its own seed
    /// derived from `seed` (SplitMix64 of the seed and the block's index), by eight interleaved
    /// xoshiro256+ streams (see `Uniform` in this module's source), so the same arguments give
    /// the same array on any machine. A mean or sum of it draws and adds the values in one
    /// pass, never holding a block.
    pub fn random(
        rt: &Runtime,
        shape: (usize, usize),
        chunks: (usize, usize),
        seed: u64,
    ) -> Result<Array> {
        Array::generated(rt, shape, chunks, |i, _, (rows, cols)| Block::Random {
            seed: block_seed(seed, i as u64),
            rows,
            cols,
        })
    }

    /// Zeros.
    pub fn zeros(rt: &Runtime, shape: (usize, usize), chunks: (usize, usize)) -> Result<Array> {
        Array::full(rt, shape, chunks, 0.0)
    }

    /// Ones.
    pub fn ones(rt: &Runtime, shape: (usize, usize), chunks: (usize, usize)) -> Result<Array> {
        Array::full(rt, shape, chunks, 1.0)
    }

    /// One value everywhere.
    pub fn full(
        rt: &Runtime,
        shape: (usize, usize),
        chunks: (usize, usize),
        value: f64,
    ) -> Result<Array> {
        Array::generated(rt, shape, chunks, |_, _, (rows, cols)| Block::Fill {
            value,
            rows,
            cols,
        })
    }

    /// `0, 1, 2, …` in row-major order.
    pub fn arange(rt: &Runtime, shape: (usize, usize), chunks: (usize, usize)) -> Result<Array> {
        let width = shape.1 as f64;
        Array::generated(rt, shape, chunks, |_, (r, c), (rows, cols)| Block::Range {
            start: r as f64 * width + c as f64,
            stride: width,
            rows,
            cols,
        })
    }

    /// An array of the driver, cut into blocks of `chunks` and put into the cluster: each block
    /// written once, as raw little-endian values, straight into the shared memory its worker
    /// maps (several puts at a time), where tasks read it in place.
    pub async fn from_ndarray(
        rt: &Runtime,
        a: &Array2<f64>,
        chunks: (usize, usize),
    ) -> Result<Array> {
        use futures::{StreamExt, TryStreamExt};
        let mut out = Array::zeros(rt, a.dim(), chunks)?;
        let (rc, cc) = (out.row_cuts.clone(), out.col_cuts.clone());
        let windows: Vec<_> = (0..rc.len() - 1)
            .flat_map(|i| (0..cc.len() - 1).map(move |j| (i, j)))
            .collect();
        let refs: Vec<ObjectRef<Blob>> = futures::stream::iter(windows)
            .map(|(i, j)| {
                let view = a.slice(s![rc[i]..rc[i + 1], cc[j]..cc[j + 1]]);
                rt.put_blob_with(block_len(view.dim()), move |buf| write_block(view, buf))
            })
            .buffered(PUTS_AT_ONCE)
            .try_collect()
            .await?;
        for (cell, r) in out.cells.iter_mut().zip(refs) {
            *cell = Cell {
                block: Block::Input(0),
                inputs: vec![r],
            };
        }
        Ok(out)
    }

    /// The shape.
    pub fn shape(&self) -> (usize, usize) {
        self.shape
    }

    /// How many blocks.
    pub fn nblocks(&self) -> usize {
        self.cells.len()
    }

    fn map_cells(&self, f: impl Fn(Block) -> Block) -> Array {
        let mut out = self.clone();
        for c in &mut out.cells {
            c.block = f(c.block.clone());
        }
        out
    }

    /// Each element with a scalar: `x op value`.
    pub fn scalar(&self, op: Op, value: f64) -> Array {
        self.map_cells(|b| Block::Scalar {
            block: Box::new(b),
            op,
            value,
            scalar_first: false,
        })
    }

    /// A scalar with each element: `value op x`.
    pub fn scalar_first(&self, value: f64, op: Op) -> Array {
        self.map_cells(|b| Block::Scalar {
            block: Box::new(b),
            op,
            value,
            scalar_first: true,
        })
    }

    /// A function of each element.
    pub fn map(&self, f: Func) -> Array {
        self.map_cells(|b| Block::Map(f, Box::new(b)))
    }

    /// Square roots.
    pub fn sqrt(&self) -> Array {
        self.map(Func::Sqrt)
    }

    /// Exponentials.
    pub fn exp(&self) -> Array {
        self.map(Func::Exp)
    }

    /// Elementwise with another array of the same shape and chunks.
    pub fn zip(&self, op: Op, other: &Array) -> Result<Array> {
        if self.shape != other.shape
            || self.row_cuts != other.row_cuts
            || self.col_cuts != other.col_cuts
        {
            return Err(invalid(format!(
                "chunk shapes do not line up: {:?} in blocks at rows {:?}, columns {:?} and {:?} in blocks at rows {:?}, columns {:?}",
                self.shape, self.row_cuts, self.col_cuts, other.shape, other.row_cuts, other.col_cuts
            )));
        }
        let mut out = self.clone();
        for (c, o) in out.cells.iter_mut().zip(&other.cells) {
            let shift = c.inputs.len();
            c.block = Block::Both(
                Box::new(c.block.clone()),
                op,
                Box::new(o.block.clone().shift_inputs(shift)),
            );
            c.inputs.extend(o.inputs.iter().cloned());
        }
        Ok(out)
    }

    /// `self + other`.
    pub fn add(&self, other: &Array) -> Result<Array> {
        self.zip(Op::Add, other)
    }
    /// `self - other`.
    pub fn sub(&self, other: &Array) -> Result<Array> {
        self.zip(Op::Sub, other)
    }
    /// `self * other`, elementwise.
    pub fn mul(&self, other: &Array) -> Result<Array> {
        self.zip(Op::Mul, other)
    }
    /// `self / other`, elementwise.
    pub fn div(&self, other: &Array) -> Result<Array> {
        self.zip(Op::Div, other)
    }

    /// Rows `rows` and columns `cols`: blocks are cut to the window, not moved.
    pub fn slice(
        &self,
        rows: std::ops::Range<usize>,
        cols: std::ops::Range<usize>,
    ) -> Result<Array> {
        if rows.start > rows.end
            || cols.start > cols.end
            || rows.end > self.shape.0
            || cols.end > self.shape.1
        {
            return Err(invalid(format!(
                "slice [{rows:?}, {cols:?}] is outside the array's shape {:?}",
                self.shape
            )));
        }
        let window = |c: &[usize], r: &std::ops::Range<usize>| -> Vec<(usize, usize, usize)> {
            // (block index, start within block, end within block) of the blocks the range meets.
            (0..c.len() - 1)
                .filter_map(|i| {
                    let (lo, hi) = (c[i].max(r.start), c[i + 1].min(r.end));
                    (lo < hi).then(|| (i, lo - c[i], hi - c[i]))
                })
                .collect()
        };
        let (wr, wc) = (window(&self.row_cuts, &rows), window(&self.col_cuts, &cols));
        let ncols = self.col_cuts.len() - 1;
        let mut cells = Vec::new();
        let mut rc = vec![0];
        let mut cc = vec![0];
        for &(_, r0, r1) in &wr {
            rc.push(rc.last().expect("one") + r1 - r0);
        }
        for &(_, c0, c1) in &wc {
            cc.push(cc.last().expect("one") + c1 - c0);
        }
        for &(i, r0, r1) in &wr {
            for &(j, c0, c1) in &wc {
                let cell = &self.cells[i * ncols + j];
                cells.push(Cell {
                    block: Block::Slice(Box::new(cell.block.clone()), [r0, r1, c0, c1]),
                    inputs: cell.inputs.clone(),
                });
            }
        }
        if cells.is_empty() {
            return Array::zeros(&self.rt, (rows.len(), cols.len()), (1, 1));
        }
        Ok(Array {
            rt: self.rt.clone(),
            shape: (rows.len(), cols.len()),
            row_cuts: Arc::new(rc),
            col_cuts: Arc::new(cc),
            cells,
        })
    }

    fn run<T>(&self, action: Action) -> Result<Vec<ObjectRef<T>>> {
        self.cells
            .iter()
            .map(|c| {
                call(
                    &self.rt,
                    BLOCK,
                    match action {
                        Action::Materialize => "array.block",
                        Action::Reduce { .. } => "array.reduce",
                    },
                    &BlockTask {
                        block: c.block.clone(),
                        action,
                    },
                    &c.inputs,
                )
            })
            .collect()
    }

    /// Runs every block and keeps them in the cluster.
    pub async fn persist(&self) -> Result<Array> {
        let refs = self.run::<Blob>(Action::Materialize)?;
        progress::watch(&self.rt, "persist", &refs).await?;
        let mut out = self.clone();
        for (c, r) in out.cells.iter_mut().zip(refs) {
            *c = Cell {
                block: Block::Input(0),
                inputs: vec![r],
            };
        }
        Ok(out)
    }

    /// The blocks' references (row-major), each in the format of [`decode_block`].
    pub fn blocks(&self) -> Result<Vec<ObjectRef<Blob>>> {
        self.run(Action::Materialize)
    }

    /// Applies a remote function `fn(Blob) -> Blob` to each block ([`decode_block`] and
    /// [`encode_block`] convert); it must keep the block's shape.
    pub async fn map_blocks<F>(&self, _f: F) -> Result<Array>
    where
        F: Remote<Args = (Blob,), Output = Blob>,
    {
        let blocks = self.blocks()?;
        let mut out = self.clone();
        for (c, b) in out.cells.iter_mut().zip(&blocks) {
            let mut list = crate::driver::object_ref::ArgList::new();
            crate::driver::object_ref::IntoArg::<Blob>::push_to(b, &mut list);
            let r: ObjectRef<Blob> = self.rt.call_function(F::NAME, F::SIGNATURE, list, None);
            *c = Cell {
                block: Block::Input(0),
                inputs: vec![r],
            };
        }
        Ok(out)
    }

    /// The whole array in the driver.
    pub async fn compute(&self) -> Result<Array2<f64>> {
        let refs = self.run::<Blob>(Action::Materialize)?;
        progress::watch(&self.rt, "compute", &refs).await?;
        let mut out = Array2::zeros(self.shape);
        let ncols = self.col_cuts.len() - 1;
        for (k, r) in refs.iter().enumerate() {
            let b = decode_block(&self.rt.get(r).await?.0)?;
            let (i, j) = (k / ncols, k % ncols);
            let (r0, c0) = (self.row_cuts[i], self.col_cuts[j]);
            let want = (self.row_cuts[i + 1] - r0, self.col_cuts[j + 1] - c0);
            if b.dim() != want {
                return Err(invalid(format!(
                    "block ({i}, {j}) came back {:?}, not {want:?}: a map_blocks function must keep the shape",
                    b.dim()
                )));
            }
            out.slice_mut(s![r0..r0 + want.0, c0..c0 + want.1])
                .assign(&b);
        }
        Ok(out)
    }

    async fn reduce_all(&self, agg: Agg) -> Result<f64> {
        let refs = self.run::<Vec<Moments>>(Action::Reduce { axis: None, agg })?;
        let tree = combine::tree(&self.rt, "array.combine", MergeMoments, &refs)?;
        progress::watch(&self.rt, "reduce", &refs).await?;
        let total = tree.total(&self.rt).await?;
        Ok(total.first().copied().unwrap_or_default().value(agg))
    }

    /// An aggregate along `axis` (0: one value per column, 1: one per row).
    pub async fn reduce_axis(&self, agg: Agg, axis: usize) -> Result<Array1<f64>> {
        if axis > 1 {
            return Err(invalid(format!(
                "axis {axis} of a 2-D array: it has axes 0 and 1"
            )));
        }
        let refs = self.run::<Vec<Moments>>(Action::Reduce {
            axis: Some(axis),
            agg,
        })?;
        let how = MergeAxis {
            axis,
            ncols: self.col_cuts.len() - 1,
            row_cuts: self.row_cuts.to_vec(),
            col_cuts: self.col_cuts.to_vec(),
        };
        let tree = combine::tree(&self.rt, "array.combine", how, &refs)?;
        progress::watch(&self.rt, "reduce", &refs).await?;
        let len = if axis == 0 {
            self.shape.1
        } else {
            self.shape.0
        };
        let mut total = vec![Moments::default(); len];
        for (offset, part) in tree.total(&self.rt).await? {
            for (t, m) in total.iter_mut().skip(offset).zip(part) {
                *t = m;
            }
        }
        Ok(total.iter().map(|m| m.value(agg)).collect())
    }

    /// The sum of all elements.
    pub async fn sum(&self) -> Result<f64> {
        self.reduce_all(Agg::Sum).await
    }
    /// The mean of all elements.
    pub async fn mean(&self) -> Result<f64> {
        self.reduce_all(Agg::Mean).await
    }
    /// The smallest element.
    pub async fn min(&self) -> Result<f64> {
        self.reduce_all(Agg::Min).await
    }
    /// The largest element.
    pub async fn max(&self) -> Result<f64> {
        self.reduce_all(Agg::Max).await
    }
    /// The standard deviation of all elements (population, as NumPy's default `ddof=0`).
    pub async fn std(&self) -> Result<f64> {
        let n = (self.shape.0 * self.shape.1) as f64;
        let sample = self.reduce_all(Agg::Std).await?;
        Ok(sample * ((n - 1.0) / n).sqrt())
    }
}

/// Partials of a reduction along one axis: each block's `Vec<Moments>` covers its stripe of
/// the axis (its columns for axis 0, its rows for axis 1), so partials merge by where their
/// stripe starts.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct MergeAxis {
    axis: usize,
    /// Blocks in a row of the grid (partials come row by row).
    ncols: usize,
    row_cuts: Vec<usize>,
    col_cuts: Vec<usize>,
}

inventory::submit! { combine::function::<MergeAxis>() }

impl Combine for MergeAxis {
    type Partial = Vec<Moments>;
    /// Merged partials by the offset their stripe starts at.
    type Total = BTreeMap<usize, Vec<Moments>>;
    const NAME: &'static str = "flotilla::collections::array::merge_axis";

    fn add_partial(
        &self,
        _: &Runtime,
        total: &mut Self::Total,
        index: usize,
        part: Vec<Moments>,
    ) -> Result<()> {
        let (i, j) = (index / self.ncols, index % self.ncols);
        let offset = if self.axis == 0 {
            self.col_cuts.get(j)
        } else {
            self.row_cuts.get(i)
        };
        let offset = offset.ok_or_else(|| invalid(format!("no block {index} in the grid")))?;
        merge_moments(total.entry(*offset).or_default(), part);
        Ok(())
    }

    fn add_total(&self, _: &Runtime, total: &mut Self::Total, other: Self::Total) -> Result<()> {
        for (offset, part) in other {
            merge_moments(total.entry(offset).or_default(), part);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fused_sum_adds_exactly_the_values_a_block_holds() {
        for n in [0, 1, 7, 8, 9, 1000, 100_003] {
            let mut values = vec![0.0; n];
            Uniform::new(5).fill(&mut values);
            // Multiples of 2⁻⁵²: as integers, their sum is exact.
            let exact: u128 = values
                .iter()
                .map(|&x| (x * (1u64 << 52) as f64) as u128)
                .sum();
            let want = exact as f64 / (1u64 << 52) as f64;
            assert_eq!(Uniform::new(5).sum(n).sum, want, "{n} values");
            let mut scalar = Uniform::new(5);
            let whole = scalar.sum_scalar(n / STREAMS);
            let tail: u128 = scalar.next_all()[..n % STREAMS]
                .iter()
                .map(|&x| x as u128)
                .sum();
            assert_eq!((whole + tail) as f64 / (1u64 << 52) as f64, want);
        }
    }
}
