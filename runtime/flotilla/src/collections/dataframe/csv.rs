//! CSV files as partitions: the driver cuts each file into byte ranges of about a block (16 MiB
//! by default) at record starts, outside quoted fields, and infers the schema from the first
//! block; a worker maps its range and reads only the columns the query uses, with the projected
//! scanner (`scan.rs`) where it applies and with `arrow-csv` otherwise.
//!
//! What `arrow-csv` lacks, written here: that scanner, cutting a file into ranges that start at
//! a record (a newline counts only outside quotes, so the driver tracks quote parity over the
//! file), and naming the file and line of a malformed record (the reader counts records of its
//! range).

use std::{fs::File, io::Cursor, os::unix::fs::FileExt, path::Path, sync::Arc};

use arrow_array::{ArrayRef, RecordBatch, RecordBatchOptions};
use arrow_csv::reader::{Format, ReaderBuilder};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};

use super::{
    scan::{self, Sink},
    Moments,
};
use crate::{collections::invalid, error::Result};

/// The default block: 16 MiB. Dask's 64 MB gives a 163 MB file three ranges, which leaves
/// slots of even a two-worker cluster idle; 16 MiB gives it ten, and a task per range costs
/// about a millisecond.
pub const DEFAULT_BLOCK: u64 = 16 << 20;

/// Options of [`super::DataFrame::read_csv_with`].
#[derive(Clone, Debug)]
pub struct CsvOptions {
    /// Bytes per partition, about (cut at the next record start).
    pub block: u64,
    /// Whether the first line of each file names the columns (default yes).
    pub header: bool,
    /// The field delimiter (default `,`).
    pub delimiter: u8,
    /// The schema; when `None`, inferred from the first block of the first file.
    pub schema: Option<SchemaRef>,
}

impl Default for CsvOptions {
    fn default() -> Self {
        CsvOptions {
            block: DEFAULT_BLOCK,
            header: true,
            delimiter: b',',
            schema: None,
        }
    }
}

/// The column types a CSV scan decodes to; other inferred types are read as text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ColType {
    /// Int64
    Int,
    /// Float64
    Float,
    /// Boolean
    Bool,
    /// Utf8
    Text,
}

impl ColType {
    pub(crate) fn of(t: &DataType) -> ColType {
        match t {
            DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => ColType::Int,
            DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 => {
                ColType::Int
            }
            DataType::Float16 | DataType::Float32 | DataType::Float64 => ColType::Float,
            DataType::Boolean => ColType::Bool,
            _ => ColType::Text,
        }
    }

    pub(crate) fn data_type(self) -> DataType {
        match self {
            ColType::Int => DataType::Int64,
            ColType::Float => DataType::Float64,
            ColType::Bool => DataType::Boolean,
            ColType::Text => DataType::Utf8,
        }
    }
}

/// One partition of a CSV scan: a byte range of a file that starts and ends at a record.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CsvRange {
    /// The file.
    pub path: String,
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// The file's columns.
    pub columns: Vec<(String, ColType)>,
    /// The field delimiter.
    pub delimiter: u8,
}

/// The schema of CSV columns.
pub fn schema_of(columns: &[(String, ColType)]) -> SchemaRef {
    Arc::new(Schema::new(
        columns
            .iter()
            .map(|(n, t)| Field::new(n, t.data_type(), true))
            .collect::<Vec<_>>(),
    ))
}

fn io_error(path: &Path, e: std::io::Error) -> crate::error::Error {
    invalid(format!("cannot read {}: {e}", path.display()))
}

/// The files a path or glob names, sorted; an error when there are none.
pub fn expand(pattern: &str) -> Result<Vec<String>> {
    let mut files: Vec<String> = glob::glob(pattern)
        .map_err(|e| invalid(format!("bad file pattern {pattern:?}: {e}")))?
        .filter_map(|p| p.ok())
        .filter(|p| p.is_file())
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(invalid(format!("no file matches {pattern:?}")));
    }
    Ok(files)
}

/// Cuts `path` into ranges of about `block` bytes, each starting at a record; the header line
/// (when there is one) belongs to none. Reads the file once, looking only at quotes and
/// newlines.
pub fn split(path: &str, block: u64, header: bool) -> Result<Vec<(u64, u64)>> {
    split_records(path, block, header, true)
}

/// Cuts `path` into ranges of about `block` bytes at line starts; `quotes` says whether a
/// newline inside double quotes continues the record (CSV) or not (plain text).
pub fn split_records(
    path: &str,
    block: u64,
    header: bool,
    quotes: bool,
) -> Result<Vec<(u64, u64)>> {
    let p = Path::new(path);
    let file = File::open(p).map_err(|e| io_error(p, e))?;
    let len = file.metadata().map_err(|e| io_error(p, e))?.len();
    if len == 0 {
        return Ok(Vec::new());
    }
    // Mapped, not copied through a buffer: this reads every byte once, for quotes.
    let map = map_file(p, &file)?;
    let mut scanner = Scanner {
        bytes: &map,
        pos: 0,
        in_quotes: false,
        quotes,
    };
    let mut cuts = Vec::new();
    let data_start = if header {
        scanner.next_record_start(0) as u64
    } else {
        0
    };
    let mut at = data_start;
    let block = block.max(1);
    while at < len {
        let want = at.saturating_add(block);
        let end = if want >= len {
            len
        } else {
            scanner.next_record_start(usize::try_from(want).unwrap_or(usize::MAX)) as u64
        };
        cuts.push((at, end));
        at = end;
    }
    Ok(cuts)
}

/// A whole file, mapped read-only (see [`map_range`] on files changed meanwhile).
#[allow(unsafe_code)]
fn map_file(p: &Path, file: &File) -> Result<memmap2::Mmap> {
    // SAFETY: read-only and private to the caller, as in `map_range`.
    unsafe { memmap2::Mmap::map(file) }.map_err(|e| io_error(p, e))
}

/// Finds record starts: keeps the quote parity from the file's start up to where it last
/// looked, so a newline inside a quoted field is never taken for a record's end.
struct Scanner<'a> {
    bytes: &'a [u8],
    pos: usize,
    in_quotes: bool,
    quotes: bool,
}

impl Scanner<'_> {
    /// The first record start at or after `from` (the byte after a newline outside quotes),
    /// or the file's length.
    fn next_record_start(&mut self, from: usize) -> usize {
        let len = self.bytes.len();
        let from = from.min(len);
        if !self.quotes {
            self.pos = from;
            return memchr::memchr(b'\n', &self.bytes[from..]).map_or(len, |i| from + i + 1);
        }
        // Quote parity up to `from`.
        if self.pos < from {
            let quotes = memchr::memchr_iter(b'"', &self.bytes[self.pos..from]).count();
            self.in_quotes ^= quotes % 2 == 1;
            self.pos = from;
        }
        // Then the first newline outside quotes.
        for i in memchr::memchr2_iter(b'"', b'\n', &self.bytes[self.pos..]) {
            let at = self.pos + i;
            if self.bytes[at] == b'"' {
                self.in_quotes = !self.in_quotes;
            } else if !self.in_quotes {
                self.pos = at + 1;
                return self.pos;
            }
        }
        self.pos = len;
        len
    }
}

/// Infers the columns of `path` from the records in its first block, up to a MiB of them.
pub fn infer(
    path: &str,
    block: u64,
    header: bool,
    delimiter: u8,
) -> Result<Vec<(String, ColType)>> {
    let p = Path::new(path);
    let file = File::open(p).map_err(|e| io_error(p, e))?;
    let len = file.metadata().map_err(|e| io_error(p, e))?.len();
    // A sample, as Dask's `sample`: the first MiB (less when the block is smaller) tells the
    // types without parsing a whole block.
    let take = len.min(block.clamp(1 << 16, 1 << 20));
    let mut bytes = vec![0; take as usize];
    file.read_exact_at(&mut bytes, 0)
        .map_err(|e| io_error(p, e))?;
    // Infer from whole records only: drop a last, cut one.
    if take < len {
        if let Some(last) = bytes.iter().rposition(|&b| b == b'\n') {
            bytes.truncate(last + 1);
        }
    }
    let (schema, _) = Format::default()
        .with_header(header)
        .with_delimiter(delimiter)
        .infer_schema(Cursor::new(&bytes), None)
        .map_err(|e| invalid(format!("cannot read the columns of {path}: {e}")))?;
    if schema.fields().is_empty() {
        return Err(invalid(format!("{path} has no columns")));
    }
    Ok(schema
        .fields()
        .iter()
        .map(|f| (f.name().clone(), ColType::of(f.data_type())))
        .collect())
}

/// The bytes of a range, mapped from the file (no copy through a buffer; the pages are those
/// of the page cache). A file truncated by another process while mapped would fault the reader,
/// as it would any reader that maps its input (Arrow's, Polars').
#[allow(unsafe_code)]
fn map_range(range: &CsvRange) -> Result<(File, Option<memmap2::Mmap>)> {
    let p = Path::new(&range.path);
    let file = File::open(p).map_err(|e| io_error(p, e))?;
    if range.end <= range.start {
        return Ok((file, None));
    }
    let len = file.metadata().map_err(|e| io_error(p, e))?.len();
    if range.end > len {
        return Err(invalid(format!(
            "{} is shorter ({len} bytes) than when it was split: it changed while being read",
            range.path
        )));
    }
    // SAFETY: the mapping is read-only and private to this call; see above for a file
    // truncated meanwhile.
    let map = unsafe {
        memmap2::MmapOptions::new()
            .offset(range.start)
            .len((range.end - range.start) as usize)
            .populate()
            .map(&file)
    }
    .map_err(|e| io_error(p, e))?;
    Ok((file, Some(map)))
}

/// The indices of the columns `projection` names (all when `None`).
fn projected(schema: &Schema, projection: Option<&[String]>) -> Result<Vec<usize>> {
    match projection {
        Some(names) => names
            .iter()
            .map(|n| {
                schema
                    .index_of(n)
                    .map_err(|_| invalid(super::expr::no_such_column(n, schema)))
            })
            .collect(),
        None => Ok((0..schema.fields().len()).collect()),
    }
}

/// Reads a range, decoding only the columns `projection` names (all when `None`), into one
/// batch: with the projected scanner when it can, else with `arrow-csv`.
pub fn read(range: &CsvRange, projection: Option<&[String]>) -> Result<RecordBatch> {
    let (file, map) = map_range(range)?;
    let bytes: &[u8] = map.as_deref().unwrap_or(&[]);
    let schema = schema_of(&range.columns);
    let indices = projected(&schema, projection)?;
    let projected = Arc::new(schema.project(&indices).map_err(super::expr::arrow_error)?);
    if bytes.is_empty() {
        return Ok(RecordBatch::new_empty(projected));
    }
    let rows = records_in(bytes);
    let mut sinks: Vec<Option<Sink>> = range.columns.iter().map(|_| None).collect();
    let mut all_scannable = true;
    for &i in &indices {
        match Sink::values(range.columns[i].1, rows) {
            // A column asked for twice is read by arrow-csv.
            Some(sink) if sinks[i].is_none() => sinks[i] = Some(sink),
            _ => all_scannable = false,
        }
    }
    let scanned = if all_scannable {
        scan::scan(bytes, range.delimiter, &mut sinks)
    } else {
        None
    };
    if let Some(records) = scanned {
        let mut arrays: Vec<Option<ArrayRef>> = sinks
            .into_iter()
            .map(|s| s.and_then(Sink::finish_array))
            .collect();
        let columns: Vec<ArrayRef> = indices
            .iter()
            .map(|&i| arrays[i].take().expect("a sink per column asked for"))
            .collect();
        // No column asked for (a row count) still has its rows.
        let options = RecordBatchOptions::new().with_row_count(Some(records));
        return RecordBatch::try_new_with_options(projected, columns, &options)
            .map_err(super::expr::arrow_error);
    }
    read_with_arrow(range, &file, bytes, &schema, &indices, projected)
}

/// Partial count, sum, min and max of each of `columns` in a range, reduced as the range is
/// scanned (no batch is built). `None` when the projected scanner cannot read the range (the
/// caller reads a batch instead).
pub(crate) fn reduce(range: &CsvRange, columns: &[String]) -> Result<Option<Vec<Moments>>> {
    let schema = schema_of(&range.columns);
    let indices = projected(&schema, Some(columns))?;
    let (_file, map) = map_range(range)?;
    let bytes: &[u8] = map.as_deref().unwrap_or(&[]);
    let mut sinks: Vec<Option<Sink>> = range.columns.iter().map(|_| None).collect();
    for &i in &indices {
        match Sink::moments(range.columns[i].1) {
            Some(sink) if sinks[i].is_none() => sinks[i] = Some(sink),
            _ => return Ok(None),
        }
    }
    if bytes.is_empty() {
        return Ok(Some(vec![Moments::default(); indices.len()]));
    }
    if scan::scan(bytes, range.delimiter, &mut sinks).is_none() {
        return Ok(None);
    }
    Ok(Some(
        indices
            .iter()
            .map(|&i| {
                sinks[i]
                    .as_ref()
                    .and_then(Sink::finish_moments)
                    .expect("a reducing sink per column asked for")
            })
            .collect(),
    ))
}

/// Reads a range with `arrow-csv` only (what [`read`] falls back to), for comparison.
pub fn read_arrow(range: &CsvRange, projection: Option<&[String]>) -> Result<RecordBatch> {
    let (file, map) = map_range(range)?;
    let bytes: &[u8] = map.as_deref().unwrap_or(&[]);
    let schema = schema_of(&range.columns);
    let indices = projected(&schema, projection)?;
    let projected = Arc::new(schema.project(&indices).map_err(super::expr::arrow_error)?);
    read_with_arrow(range, &file, bytes, &schema, &indices, projected)
}

/// How many records `bytes` holds at most (its lines), to size the columns once.
fn records_in(bytes: &[u8]) -> usize {
    memchr::memchr_iter(b'\n', bytes).count() + 1
}

/// Reads a range's bytes with `arrow-csv`: quoted fields, text and booleans, and the errors
/// of malformed records.
fn read_with_arrow(
    range: &CsvRange,
    file: &File,
    bytes: &[u8],
    schema: &SchemaRef,
    indices: &[usize],
    projected: SchemaRef,
) -> Result<RecordBatch> {
    let rows_guess = bytes.len() / 8 + 1;
    let reader = ReaderBuilder::new(schema.clone())
        .with_header(false)
        .with_delimiter(range.delimiter)
        .with_projection(indices.to_vec())
        .with_batch_size(rows_guess.min(1 << 22))
        .build_buffered(Cursor::new(bytes))
        .map_err(|e| invalid(e.to_string()))?;
    let mut batches = Vec::new();
    for batch in reader {
        batches.push(batch.map_err(|e| located(range, file, &e.to_string()))?);
    }
    match batches.len() {
        0 => Ok(RecordBatch::new_empty(projected)),
        1 => Ok(batches.pop().expect("one batch")),
        _ => arrow_select::concat::concat_batches(&projected, &batches)
            .map_err(super::expr::arrow_error),
    }
}

/// A reader's error with the file and the line in the file: the reader counts records from the
/// start of its range, so the lines before the range are counted here (only when it failed).
fn located(range: &CsvRange, file: &File, message: &str) -> crate::error::Error {
    let mut lines_before = 0u64;
    let mut buffer = vec![0; 1 << 20];
    let mut at = 0;
    while at < range.start {
        let n = buffer.len().min((range.start - at) as usize);
        if file.read_exact_at(&mut buffer[..n], at).is_err() {
            break;
        }
        lines_before += memchr::memchr_iter(b'\n', &buffer[..n]).count() as u64;
        at += n as u64;
    }
    // arrow-csv says "... at line N" counting records of the range from 0 (or 1 after a
    // header it skipped, which a range never has).
    let in_range = message
        .split("at line ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse::<u64>().ok());
    let column = message
        .split("for column ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse::<usize>().ok())
        .and_then(|i| range.columns.get(i))
        .map(|(name, _)| format!(", column {name:?}"))
        .unwrap_or_default();
    match in_range {
        Some(n) => invalid(format!(
            "{}: line {}{column}: {message}",
            range.path,
            lines_before + n + 1
        )),
        None => invalid(format!(
            "{}: in the records from line {}: {message}",
            range.path,
            lines_before + 1
        )),
    }
}

/// Writes the seed article's `large_data.csv`: a header `col1,col2`, then `i,2i` for `i` in
/// `0..rows` (about 163 MB for 10,000,000 rows). Used by the `csv_mean` example and
/// `flotilla bench`.
pub fn write_example(path: &Path, rows: u64) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("csv.partial");
    {
        let mut out = std::io::BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
        out.write_all(b"col1,col2\n")?;
        for i in 0..rows {
            writeln!(out, "{i},{}", 2 * i)?;
        }
        out.flush()?;
    }
    // Whole or not at all: a run stopped halfway leaves no short file behind.
    std::fs::rename(&tmp, path)
}
