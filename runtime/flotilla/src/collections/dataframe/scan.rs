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
    /// Keeps only count, sum, min and max (of integers or floats), for a query that reduces
    /// the column and needs nothing else of it.
    Moments(ColType, MomentsAcc),
}

/// Running count, sum and extremes.
#[derive(Clone, Copy)]
pub(crate) struct MomentsAcc {
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
}

impl Default for MomentsAcc {
    fn default() -> Self {
        MomentsAcc {
            count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }
}

impl MomentsAcc {
    #[inline]
    fn push(&mut self, x: f64) {
        self.count += 1;
        self.sum += x;
        self.min = self.min.min(x);
        self.max = self.max.max(x);
    }

    /// As [`Moments`] (no squared deviations: a scan that needs them keeps the values).
    pub(crate) fn moments(&self) -> Moments {
        if self.count == 0 {
            return Moments::default();
        }
        Moments {
            count: self.count,
            sum: self.sum,
            min: self.min,
            max: self.max,
            m2: 0.0,
        }
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
        matches!(t, ColType::Int | ColType::Float).then(|| Sink::Moments(t, MomentsAcc::default()))
    }

    /// Parses one field into the sink; false when it is not a value of the column's type.
    #[inline]
    fn push(&mut self, field: &[u8]) -> bool {
        match self {
            Sink::Ints(values, nulls) => {
                if field.is_empty() {
                    values.push(0);
                    nulls.append_null();
                    return true;
                }
                match parse_int(field) {
                    Some(v) => {
                        values.push(v);
                        nulls.append_non_null();
                        true
                    }
                    None => false,
                }
            }
            Sink::Floats(values, nulls) => {
                if field.is_empty() {
                    values.push(0.0);
                    nulls.append_null();
                    return true;
                }
                match lexical_core::parse::<f64>(field) {
                    Ok(v) => {
                        values.push(v);
                        nulls.append_non_null();
                        true
                    }
                    Err(_) => false,
                }
            }
            Sink::Moments(t, acc) => {
                if field.is_empty() {
                    return true; // a null: not counted
                }
                let v = match t {
                    ColType::Int => parse_int(field).map(|v| v as f64),
                    _ => lexical_core::parse::<f64>(field).ok(),
                };
                match v {
                    Some(v) => {
                        acc.push(v);
                        true
                    }
                    None => false,
                }
            }
        }
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
            Sink::Moments(..) => None,
        }
    }

    /// The moments of a reducing sink.
    pub(crate) fn finish_moments(&self) -> Option<Moments> {
        match self {
            Sink::Moments(_, acc) => Some(acc.moments()),
            _ => None,
        }
    }
}

/// A decimal integer as `arrow-csv` reads one (an optional sign, then digits, no overflow).
#[inline]
fn parse_int(field: &[u8]) -> Option<i64> {
    let (negative, digits) = match field[0] {
        b'-' => (true, &field[1..]),
        b'+' => (false, &field[1..]),
        _ => (false, field),
    };
    if digits.is_empty() {
        return None;
    }
    if digits.len() < 19 {
        // At most 18 digits cannot overflow.
        let mut v: i64 = 0;
        for &b in digits {
            let d = b.wrapping_sub(b'0');
            if d > 9 {
                return None;
            }
            v = v * 10 + d as i64;
        }
        return Some(if negative { -v } else { v });
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
/// feeding field `i` to `sinks[i]` when there is one. False when the range is not one this
/// scanner reads exactly as `arrow-csv` would (see the module's comment); the sinks are then
/// partly filled and must be dropped.
///
/// Field ends are found 64 bytes at a time as a bit mask (delimiters, newlines, and the rare
/// quotes and carriage returns), as
/// simdjson-style parsers do, then visited bit by bit: the work is per field, not per byte.
pub(crate) fn scan(bytes: &[u8], delimiter: u8, sinks: &mut [Option<Sink>]) -> bool {
    let ncols = sinks.len();
    if ncols == 0 || matches!(delimiter, b'"' | b'\n' | b'\r') {
        return false;
    }
    let mut at = Cursor { field: 0, start: 0 };
    let mut chunks = bytes.chunks_exact(64);
    let mut base = 0;
    for chunk in &mut chunks {
        let mut mask = separators(chunk.try_into().expect("64 bytes"), delimiter);
        while mask != 0 {
            let end = base + mask.trailing_zeros() as usize;
            mask &= mask - 1;
            if !at.separator(bytes, sinks, end, delimiter) {
                return false;
            }
        }
        base += 64;
    }
    for (i, &b) in chunks.remainder().iter().enumerate() {
        if matches!(b, b'\n' | b'"' | b'\r') || b == delimiter {
            if !at.separator(bytes, sinks, base + i, delimiter) {
                return false;
            }
        }
    }
    // The last record when no newline ends it.
    at.start >= bytes.len() || at.field_end(bytes, sinks, bytes.len(), true)
}

/// Where a scan is: the field of the record, and where it starts.
struct Cursor {
    field: usize,
    start: usize,
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
                if !sink.push(value) {
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

    #[test]
    fn integers_parse_as_arrow_reads_them() {
        assert_eq!(parse_int(b"0"), Some(0));
        assert_eq!(parse_int(b"-12"), Some(-12));
        assert_eq!(parse_int(b"+7"), Some(7));
        assert_eq!(parse_int(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_int(b"-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_int(b"9223372036854775808"), None);
        assert_eq!(parse_int(b"1.5"), None);
        assert_eq!(parse_int(b"-"), None);
        assert_eq!(parse_int(b" 1"), None);
    }
}
