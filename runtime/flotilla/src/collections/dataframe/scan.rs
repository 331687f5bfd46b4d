//! A projected scanner for the common case of CSV ranges: unquoted records whose asked-for
//! columns are numbers. It walks the bytes once, finds field ends, and parses only the fields of
//! the columns the query reads (integers by hand, floats with `lexical-core`, the parser
//! `arrow-csv` itself uses); every other field is skipped unparsed. `arrow-csv` tokenizes and
//! stores every field of every record, which is most of a scan's time when a query reads one
//! column of several.
//!
//! It handles only what it can handle exactly as `arrow-csv` does, and says `None` otherwise:
//! a quote anywhere in the range, a text or boolean column asked for, a blank line, a lone
//! carriage return, a record with another number of fields, or a value that does not parse. The
//! caller then reads the range with `arrow-csv`, which gives the same values or its own error.

use std::sync::Arc;

use arrow_array::{ArrayRef, Float64Array, Int64Array};
use arrow_buffer::NullBufferBuilder;

use super::{csv::ColType, Moments};

/// What the scan does with one column's values.
pub(crate) enum Sink {
    /// Keeps 64-bit integers.
    Ints(Vec<i64>, NullBufferBuilder),
    /// Keeps 64-bit floats.
    Floats(Vec<f64>, NullBufferBuilder),
    /// Keeps only count, sum, min and max of integers, for a query that reduces the column
    /// and needs nothing else of it (exact: an integer sum, rounded once at the end).
    IntMoments(IntAcc),
    /// The same of floats.
    FloatMoments(FloatAcc),
}

/// Running count, sum and extremes of integers.
pub(crate) struct IntAcc {
    count: u64,
    sum: i128,
    min: i64,
    max: i64,
}

impl IntAcc {
    #[inline(always)]
    fn push(&mut self, x: i64) {
        self.count += 1;
        self.sum += x as i128;
        self.min = self.min.min(x);
        self.max = self.max.max(x);
    }

    fn moments(&self) -> Moments {
        if self.count == 0 {
            return Moments::default();
        }
        Moments {
            count: self.count,
            sum: self.sum as f64,
            min: self.min as f64,
            max: self.max as f64,
            m2: 0.0,
        }
    }
}

/// Running count, sum and extremes of floats.
pub(crate) struct FloatAcc(Moments);

impl FloatAcc {
    #[inline(always)]
    fn push(&mut self, x: f64) {
        let m = &mut self.0;
        m.count += 1;
        m.sum += x;
        m.min = m.min.min(x);
        m.max = m.max.max(x);
    }
}

impl Sink {
    /// A sink keeping the values of a column of type `t`; `None` for types the scanner leaves
    /// to `arrow-csv`.
    pub(crate) fn values(t: ColType, capacity: usize) -> Option<Sink> {
        match t {
            ColType::Int => Some(Sink::Ints(
                Vec::with_capacity(capacity),
                NullBufferBuilder::new(capacity),
            )),
            ColType::Float => Some(Sink::Floats(
                Vec::with_capacity(capacity),
                NullBufferBuilder::new(capacity),
            )),
            ColType::Bool | ColType::Text => None,
        }
    }

    /// A sink reducing a column of type `t` as it is read.
    pub(crate) fn moments(t: ColType) -> Option<Sink> {
        match t {
            ColType::Int => Some(Sink::IntMoments(IntAcc {
                count: 0,
                sum: 0,
                min: i64::MAX,
                max: i64::MIN,
            })),
            ColType::Float => Some(Sink::FloatMoments(FloatAcc(Moments::default()))),
            ColType::Bool | ColType::Text => None,
        }
    }

    /// Parses the field `bytes[start..end]` into the sink (an empty one is a null); false when
    /// it is not a value of the column's type.
    #[inline(always)]
    fn push(&mut self, bytes: &[u8], start: usize, end: usize) -> bool {
        let field = &bytes[start..end];
        if field.is_empty() {
            match self {
                Sink::Ints(values, nulls) => {
                    values.push(0);
                    nulls.append_null();
                }
                Sink::Floats(values, nulls) => {
                    values.push(0.0);
                    nulls.append_null();
                }
                // A null is not counted.
                Sink::IntMoments(_) | Sink::FloatMoments(_) => {}
            }
            return true;
        }
        match self {
            Sink::Ints(values, nulls) => parse_int(bytes, start, end).map(|v| {
                values.push(v);
                nulls.append_non_null();
            }),
            Sink::Floats(values, nulls) => lexical_core::parse::<f64>(field).ok().map(|v| {
                values.push(v);
                nulls.append_non_null();
            }),
            Sink::IntMoments(acc) => parse_int(bytes, start, end).map(|v| acc.push(v)),
            Sink::FloatMoments(acc) => lexical_core::parse::<f64>(field).ok().map(|v| acc.push(v)),
        }
        .is_some()
    }

    /// The values kept, as an Arrow array (`None` for a reducing sink).
    pub(crate) fn finish_array(self) -> Option<ArrayRef> {
        match self {
            Sink::Ints(values, mut nulls) => {
                Some(Arc::new(Int64Array::new(values.into(), nulls.finish())))
            }
            Sink::Floats(values, mut nulls) => {
                Some(Arc::new(Float64Array::new(values.into(), nulls.finish())))
            }
            Sink::IntMoments(_) | Sink::FloatMoments(_) => None,
        }
    }

    /// The moments of a reducing sink.
    pub(crate) fn finish_moments(&self) -> Option<Moments> {
        match self {
            Sink::IntMoments(acc) => Some(acc.moments()),
            Sink::FloatMoments(acc) => Some(acc.0),
            _ => None,
        }
    }
}

/// The decimal integer `bytes[start..end]` (not empty) as `arrow-csv` reads one: an optional
/// sign, then digits, no overflow. Up to 8 digits are read at once from one 8-byte load.
#[inline(always)]
fn parse_int(bytes: &[u8], start: usize, end: usize) -> Option<i64> {
    let (negative, from) = match bytes[start] {
        b'-' => (true, start + 1),
        b'+' => (false, start + 1),
        _ => (false, start),
    };
    let n = end - from;
    if n == 0 {
        return None;
    }
    if n <= 8 {
        if let Some(chunk) = bytes.get(from..from + 8) {
            let v = eight_digits(u64::from_le_bytes(chunk.try_into().expect("8 bytes")), n)? as i64;
            return Some(if negative { -v } else { v });
        }
    }
    parse_digits(&bytes[from..end], negative)
}

/// The value of the first `n` (1 to 8) bytes of `x` (loaded little-endian, so the first byte is
/// the most significant digit) when all are ASCII digits: a shift pads the number with leading
/// zeros to 8 digits, then three multiplies combine pairs, quads and halves.
#[inline(always)]
fn eight_digits(x: u64, n: usize) -> Option<u64> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    let keep = if n == 8 {
        u64::MAX
    } else {
        (1u64 << (8 * n)) - 1
    };
    let x = x & keep;
    let zeros = (0x30 * ONES) & keep;
    if x & (0xF0 * ONES) != zeros || (x + 0x06 * ONES) & (0xF0 * ONES) != zeros {
        return None;
    }
    let d = (x - zeros) << (8 * (8 - n));
    let d = d.wrapping_mul(10).wrapping_add(d >> 8);
    let pairs = 0x0000_00FF_0000_00FF;
    Some(
        ((d & pairs)
            .wrapping_mul(100 + (1_000_000 << 32))
            .wrapping_add(((d >> 16) & pairs).wrapping_mul(1 + (10_000 << 32))))
            >> 32,
    )
}

/// Digits one by one, with overflow checked.
fn parse_digits(digits: &[u8], negative: bool) -> Option<i64> {
    if digits.is_empty() {
        return None;
    }
    let mut v: i64 = 0;
    for &b in digits {
        let d = b.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        v = v.checked_mul(10)?;
        v = if negative {
            v.checked_sub(d as i64)?
        } else {
            v.checked_add(d as i64)?
        };
    }
    Some(v)
}

/// Scans the records of `bytes` (whole records, no header) with `sinks.len()` fields each,
/// feeding field `i` to `sinks[i]` when there is one; the number of records. `None` when the
/// range is not one this scanner reads exactly as `arrow-csv` would (see the module's
/// comment); the sinks are then partly filled and must be dropped.
///
/// Field ends are found 64 bytes at a time as a bit mask (delimiters, newlines, and the rare
/// quotes and carriage returns), as
/// simdjson-style parsers do, then visited bit by bit: the work is per field, not per byte.
pub(crate) fn scan(bytes: &[u8], delimiter: u8, sinks: &mut [Option<Sink>]) -> Option<usize> {
    let ncols = sinks.len();
    if ncols == 0 || matches!(delimiter, b'"' | b'\n' | b'\r') {
        return None;
    }
    let mut at = Cursor {
        field: 0,
        start: 0,
        records: 0,
    };
    let mut chunks = bytes.chunks_exact(64);
    let mut base = 0;
    for chunk in &mut chunks {
        let mut mask = separators(chunk.try_into().expect("64 bytes"), delimiter);
        while mask != 0 {
            let end = base + mask.trailing_zeros() as usize;
            mask &= mask - 1;
            if !at.separator(bytes, sinks, end, delimiter) {
                return None;
            }
        }
        base += 64;
    }
    for (i, &b) in chunks.remainder().iter().enumerate() {
        if (matches!(b, b'\n' | b'"' | b'\r') || b == delimiter)
            && !at.separator(bytes, sinks, base + i, delimiter)
        {
            return None;
        }
    }
    // The last record when no newline ends it.
    if at.start < bytes.len() && !at.field_end(bytes, sinks, bytes.len(), true) {
        return None;
    }
    Some(at.records)
}

/// Where a scan is: the field of the record, and where it starts.
struct Cursor {
    field: usize,
    start: usize,
    records: usize,
}

impl Cursor {
    /// A byte the mask marked at `end`: a field's end, or a quote or carriage return (quotes
    /// are left to arrow-csv; a carriage return is allowed only before a newline, since a lone
    /// one ends a record in arrow-csv, and is dropped from the field where the line ends).
    #[inline(always)]
    fn separator(
        &mut self,
        bytes: &[u8],
        sinks: &mut [Option<Sink>],
        end: usize,
        delimiter: u8,
    ) -> bool {
        match bytes[end] {
            b'\n' => self.field_end(bytes, sinks, end, true),
            b if b == delimiter => self.field_end(bytes, sinks, end, false),
            b'\r' => end + 1 == bytes.len() || bytes[end + 1] == b'\n',
            _ => false, // a quote
        }
    }

    /// One field ends at `end` (a delimiter, a newline, or the end of the bytes): parsed when
    /// it is asked for. False when the record is not one the scanner reads.
    #[inline(always)]
    fn field_end(
        &mut self,
        bytes: &[u8],
        sinks: &mut [Option<Sink>],
        end: usize,
        line_end: bool,
    ) -> bool {
        let mut value = &bytes[self.start..end];
        if line_end {
            if let [rest @ .., b'\r'] = value {
                value = rest;
            }
            if self.field == 0 && value.is_empty() {
                return false; // a blank line
            }
        }
        match sinks.get_mut(self.field) {
            None => return false, // more fields than columns
            Some(Some(sink)) => {
                if !sink.push(bytes, self.start, self.start + value.len()) {
                    return false;
                }
            }
            Some(None) => {}
        }
        self.field += 1;
        if line_end {
            if self.field != sinks.len() {
                return false; // fewer fields than columns
            }
            self.field = 0;
            self.records += 1;
        }
        self.start = end + 1;
        true
    }
}

/// Bit `i` set where byte `i` is the delimiter, a newline, a quote or a carriage return.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[inline]
fn separators(chunk: &[u8; 64], delimiter: u8) -> u64 {
    use std::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
    };
    let mut mask = 0u64;
    // SAFETY: SSE2 is part of every x86_64 processor; each load reads 16 bytes at 16k of a
    // 64-byte array.
    unsafe {
        let (d, nl) = (_mm_set1_epi8(delimiter as i8), _mm_set1_epi8(b'\n' as i8));
        let (q, cr) = (_mm_set1_epi8(b'"' as i8), _mm_set1_epi8(b'\r' as i8));
        for k in 0..4 {
            let v = _mm_loadu_si128(chunk.as_ptr().add(16 * k).cast());
            let hits = _mm_or_si128(
                _mm_or_si128(_mm_cmpeq_epi8(v, d), _mm_cmpeq_epi8(v, nl)),
                _mm_or_si128(_mm_cmpeq_epi8(v, q), _mm_cmpeq_epi8(v, cr)),
            );
            mask |= (_mm_movemask_epi8(hits) as u16 as u64) << (16 * k);
        }
    }
    mask
}

/// Bit `i` set where byte `i` is the delimiter, a newline, a quote or a carriage return.
#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn separators(chunk: &[u8; 64], delimiter: u8) -> u64 {
    chunk.iter().enumerate().fold(0, |m, (i, &b)| {
        m | ((matches!(b, b'\n' | b'"' | b'\r') || b == delimiter) as u64) << i
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int(text: &str) -> Option<i64> {
        // Read both ways: from a field with bytes after it (the 8-byte load) and from one at the
        // end of the buffer (digit by digit).
        let padded = format!("{text},99999999");
        let fast = parse_int(padded.as_bytes(), 0, text.len());
        let slow = parse_int(text.as_bytes(), 0, text.len());
        assert_eq!(fast, slow, "{text:?}");
        fast
    }

    #[test]
    fn integers_parse_as_arrow_reads_them() {
        assert_eq!(int("0"), Some(0));
        assert_eq!(int("-12"), Some(-12));
        assert_eq!(int("+7"), Some(7));
        assert_eq!(int("00000042"), Some(42));
        assert_eq!(int("9223372036854775807"), Some(i64::MAX));
        assert_eq!(int("-9223372036854775808"), Some(i64::MIN));
        assert_eq!(int("9223372036854775808"), None);
        for bad in ["1.5", "-", "+", " 1", "1 ", "1e3", "12a4", "/", ":", "9:"] {
            assert_eq!(int(bad), None, "{bad:?}");
        }
        let mut x: u64 = 1;
        for _ in 0..10_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let v = (x >> 40) as i64 % 100_000_000 * if x & 1 == 0 { 1 } else { -1 };
            assert_eq!(int(&v.to_string()), Some(v));
        }
    }

    /// Sums of two integer columns, or `None` where the scanner leaves the bytes to arrow-csv.
    fn sums(text: &str) -> Option<(usize, f64, f64)> {
        let mut sinks = vec![Sink::moments(ColType::Int), Sink::moments(ColType::Int)];
        let records = scan(text.as_bytes(), b',', &mut sinks)?;
        let m: Vec<Moments> = sinks
            .iter()
            .map(|s| s.as_ref().unwrap().finish_moments().unwrap())
            .collect();
        Some((records, m[0].sum, m[1].sum))
    }

    #[test]
    fn the_scanner_reads_plain_records_and_leaves_the_rest() {
        assert_eq!(sums("1,2\n3,4\n"), Some((2, 4.0, 6.0)));
        assert_eq!(sums("1,2\r\n3,4"), Some((2, 4.0, 6.0)));
        assert_eq!(sums("1,\n,4\n"), Some((2, 1.0, 4.0)));
        // Long enough for the 64-byte masks, with the last record unterminated.
        let long: String = (0..100).map(|i| format!("{i},{}\n", 2 * i)).collect();
        assert_eq!(sums(long.trim_end()), Some((100, 4950.0, 9900.0)));
        for other in [
            "1,\"2\"\n",
            "1,2\n\n3,4\n",
            "1,2\r3,4\n",
            "1\n",
            "1,2,3\n",
            "1,x\n",
        ] {
            assert_eq!(sums(other), None, "{other:?}");
        }
    }
}
