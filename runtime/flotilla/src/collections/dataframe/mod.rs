//! Dataframes: partitions are Arrow record batches, held in the cluster as objects in Arrow's IPC
//! stream format (a reader on the same host maps them without copying again: Arrow's `Buffer`
//! wraps the object's `Bytes`). Operations are recorded as a plan; asking for a result runs one
//! fused task per partition (scan with projection, the plan's steps, a partial aggregate) and
//! combines the small partials in a tree of tasks (`merge`).

pub mod csv;
pub mod expr;
mod merge;
mod scan;

use std::{collections::BTreeMap, sync::Arc};

use arrow_array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
};
use arrow_buffer::Buffer;
use arrow_cast::cast;
use arrow_ipc::{reader::StreamDecoder, writer::StreamWriter};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use self::expr::{arrow_error, no_such_column};
use self::merge::MergeGroups;
pub(crate) use self::merge::{merge_moments, MergeMoments};
pub use self::{
    csv::{CsvOptions, CsvRange},
    expr::{col, lit, BinOp, Expr, Lit},
};
use super::{blocking, call, combine, invalid, plan, progress};
use crate::{
    codec::{self, Blob},
    driver::{object_ref::ObjectRef, Runtime},
    error::Result,
    registry::{Invocation, Remote, RemoteFunction, TaskContext},
};

/// An aggregate of a column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Agg {
    /// The sum.
    Sum,
    /// The arithmetic mean.
    Mean,
    /// The smallest value.
    Min,
    /// The largest value.
    Max,
    /// How many values are not null.
    Count,
    /// The sample standard deviation (n − 1 in the denominator, as pandas and Dask).
    Std,
}

impl Agg {
    fn name(self) -> &'static str {
        match self {
            Agg::Sum => "sum",
            Agg::Mean => "mean",
            Agg::Min => "min",
            Agg::Max => "max",
            Agg::Count => "count",
            Agg::Std => "std",
        }
    }
}

/// The partial aggregate of one partition: count, sum, extremes and the sum of squared
/// deviations from the partition's mean (merged with Chan's formula, so a standard deviation
/// stays exact across partitions).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Moments {
    /// Values that are not null.
    pub count: u64,
    /// Their sum.
    pub sum: f64,
    /// The smallest.
    pub min: f64,
    /// The largest.
    pub max: f64,
    /// Σ (x − mean)².
    pub m2: f64,
}

impl Default for Moments {
    fn default() -> Self {
        Moments {
            count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            m2: 0.0,
        }
    }
}

impl Moments {
    /// The moments of a numeric array (`m2` only when `spread`, as it reads the values twice).
    pub fn of(array: &ArrayRef, spread: bool) -> Result<Moments> {
        if !array.data_type().is_numeric() {
            // Only counted (the query checked that nothing else is asked of it).
            return Ok(Moments {
                count: (array.len() - array.null_count()) as u64,
                ..Moments::default()
            });
        }
        let floats = if array.data_type() == &DataType::Float64 {
            array.clone()
        } else {
            cast(array, &DataType::Float64).map_err(arrow_error)?
        };
        let values = floats
            .as_any()
            .downcast_ref::<Float64Array>()
            .expect("cast to Float64");
        let count = (values.len() - values.null_count()) as u64;
        if count == 0 {
            return Ok(Moments::default());
        }
        let sum = arrow_arith::aggregate::sum(values).unwrap_or(0.0);
        let min = arrow_arith::aggregate::min(values).unwrap_or(f64::INFINITY);
        let max = arrow_arith::aggregate::max(values).unwrap_or(f64::NEG_INFINITY);
        let m2 = if spread {
            let mean = sum / count as f64;
            values
                .iter()
                .flatten()
                .map(|x| (x - mean) * (x - mean))
                .sum()
        } else {
            0.0
        };
        Ok(Moments {
            count,
            sum,
            min,
            max,
            m2,
        })
    }

    /// Both partials as one.
    pub fn merge(self, other: Moments) -> Moments {
        if self.count == 0 {
            return other;
        }
        if other.count == 0 {
            return self;
        }
        let (na, nb) = (self.count as f64, other.count as f64);
        let delta = other.sum / nb - self.sum / na;
        Moments {
            count: self.count + other.count,
            sum: self.sum + other.sum,
            min: self.min.min(other.min),
            max: self.max.max(other.max),
            m2: self.m2 + other.m2 + delta * delta * na * nb / (na + nb),
        }
    }

    /// The aggregate's value (NaN for the mean, min, max or std of nothing).
    pub fn value(&self, agg: Agg) -> f64 {
        let n = self.count as f64;
        match agg {
            Agg::Count => n,
            Agg::Sum => self.sum,
            _ if self.count == 0 => f64::NAN,
            Agg::Mean => self.sum / n,
            Agg::Min => self.min,
            Agg::Max => self.max,
            Agg::Std if self.count < 2 => f64::NAN,
            Agg::Std => (self.m2 / (n - 1.0)).sqrt(),
        }
    }
}

/// One step of a plan, applied to each partition in turn.
#[derive(Clone, Debug, Serialize, Deserialize)]
enum Step {
    /// Keep these columns, in this order.
    Select(Vec<String>),
    /// Keep the rows where the expression is true.
    Filter(Expr),
    /// Add (or replace) a column.
    WithColumn(String, Expr),
}

/// Where a partition comes from.
#[derive(Clone, Debug, Serialize, Deserialize)]
enum Scan {
    /// A range of a CSV file.
    Csv(CsvRange),
    /// The batch passed as the task's second argument.
    Batch,
}

/// What a partition's task returns.
#[derive(Clone, Debug, Serialize, Deserialize)]
enum Action {
    /// The batch (IPC bytes).
    Materialize,
    /// Its first rows (IPC bytes).
    Head(usize),
    /// Partial aggregates (`Vec<Moments>`); a `None` expression counts rows.
    Aggregate(Vec<(Option<Expr>, bool)>),
    /// Partial aggregates per group (`Vec<(Vec<Key>, Vec<Moments>)>`).
    GroupBy {
        keys: Vec<String>,
        values: Vec<(Expr, bool)>,
    },
}

impl Action {
    /// The name of the tasks that run it.
    fn stage(&self) -> &'static str {
        match self {
            Action::Materialize => "dataframe.partition",
            Action::Head(_) => "dataframe.head",
            Action::Aggregate(_) => "dataframe.aggregate",
            Action::GroupBy { .. } => "dataframe.groupby",
        }
    }
}

/// The plan of one partition's task.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Query {
    scan: Scan,
    /// The source columns the plan reads (all when `None`).
    needed: Option<Vec<String>>,
    steps: Vec<Step>,
    action: Action,
}

const QUERY: &str = "flotilla::collections::dataframe::query";

inventory::submit! {
    RemoteFunction {
        name: QUERY,
        signature: super::VARIADIC,
        invoke: invoke_query,
        takes_runtime: false,
    }
}

fn invoke_query(args: Vec<Bytes>, _ctx: TaskContext) -> Invocation {
    blocking(move || run_query(&args))
}

/// Runs one partition's plan (on a worker).
fn run_query(args: &[Bytes]) -> Result<Bytes> {
    let query: Query = plan(args)?;
    if let Some(partials) = fused_aggregate(&query)? {
        return codec::encode(&partials);
    }
    let mut batch = match &query.scan {
        Scan::Csv(range) => csv::read(range, query.needed.as_deref())?,
        Scan::Batch => {
            let bytes = args
                .get(1)
                .ok_or_else(|| invalid("a dataframe task lost its partition"))?;
            decode_batch(bytes)?
        }
    };
    for step in &query.steps {
        batch = apply(batch, step)?;
    }
    match query.action {
        Action::Materialize => encode_batch(&batch).map(|b| b.0),
        Action::Head(n) => encode_batch(&batch.slice(0, n.min(batch.num_rows()))).map(|b| b.0),
        Action::Aggregate(values) => {
            let mut out = Vec::with_capacity(values.len());
            for (e, spread) in &values {
                out.push(match e {
                    None => Moments {
                        count: batch.num_rows() as u64,
                        ..Moments::default()
                    },
                    Some(e) => Moments::of(&e.eval(&batch)?, *spread)?,
                });
            }
            codec::encode(&out)
        }
        Action::GroupBy { keys, values } => codec::encode(&group(&batch, &keys, &values)?),
    }
}

/// A CSV range only reduced (no steps, plain columns, no spread): the partial aggregates
/// computed as the range is scanned, so no batch is ever built. `None` when the query is not
/// of that shape or the projected scanner cannot read the range.
fn fused_aggregate(query: &Query) -> Result<Option<Vec<Moments>>> {
    let (Scan::Csv(range), true, Action::Aggregate(values)) =
        (&query.scan, query.steps.is_empty(), &query.action)
    else {
        return Ok(None);
    };
    let mut columns = Vec::with_capacity(values.len());
    for value in values {
        match value {
            (Some(Expr::Col(c)), false) if !columns.contains(c) => columns.push(c.clone()),
            _ => return Ok(None),
        }
    }
    csv::reduce(range, &columns)
}

fn apply(batch: RecordBatch, step: &Step) -> Result<RecordBatch> {
    match step {
        Step::Select(names) => {
            let schema = batch.schema();
            let indices = names
                .iter()
                .map(|n| {
                    schema
                        .index_of(n)
                        .map_err(|_| invalid(no_such_column(n, &schema)))
                })
                .collect::<Result<Vec<_>>>()?;
            batch.project(&indices).map_err(arrow_error)
        }
        Step::Filter(e) => {
            let mask = e.eval(&batch)?;
            let mask = mask
                .as_any()
                .downcast_ref::<BooleanArray>()
                .ok_or_else(|| invalid(format!("a filter must be boolean: {}", e.name())))?;
            arrow_select::filter::filter_record_batch(&batch, mask).map_err(arrow_error)
        }
        Step::WithColumn(name, e) => {
            let values = e.eval(&batch)?;
            let schema = batch.schema();
            let mut fields: Vec<Field> =
                schema.fields().iter().map(|f| f.as_ref().clone()).collect();
            let mut columns = batch.columns().to_vec();
            let field = Field::new(name, values.data_type().clone(), true);
            match schema.index_of(name) {
                Ok(i) => {
                    fields[i] = field;
                    columns[i] = values;
                }
                Err(_) => {
                    fields.push(field);
                    columns.push(values);
                }
            }
            RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(arrow_error)
        }
    }
}

/// A value of a group key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Key {
    /// A null.
    Null,
    /// An integer.
    Int(i64),
    /// A boolean.
    Bool(bool),
    /// A float, by its bits (ordered as bits: groups come out in a stable order).
    Float(u64),
    /// Text.
    Text(String),
}

fn key_at(array: &ArrayRef, row: usize) -> Key {
    if array.is_null(row) {
        return Key::Null;
    }
    let any = array.as_any();
    if let Some(a) = any.downcast_ref::<Int64Array>() {
        Key::Int(a.value(row))
    } else if let Some(a) = any.downcast_ref::<StringArray>() {
        Key::Text(a.value(row).to_string())
    } else if let Some(a) = any.downcast_ref::<BooleanArray>() {
        Key::Bool(a.value(row))
    } else if let Some(a) = any.downcast_ref::<Float64Array>() {
        Key::Float(a.value(row).to_bits())
    } else {
        Key::Null
    }
}

type Groups = Vec<(Vec<Key>, Vec<Moments>)>;

fn group(batch: &RecordBatch, keys: &[String], values: &[(Expr, bool)]) -> Result<Groups> {
    let key_columns: Vec<ArrayRef> = keys
        .iter()
        .map(|k| normalize_key(&expr::col(k).eval(batch)?))
        .collect::<Result<_>>()?;
    let value_columns: Vec<Float64Array> = values
        .iter()
        .map(|(e, _)| {
            let a = e.eval(batch)?;
            let a = cast(&a, &DataType::Float64).map_err(arrow_error)?;
            Ok(a.as_any()
                .downcast_ref::<Float64Array>()
                .expect("cast to Float64")
                .clone())
        })
        .collect::<Result<_>>()?;
    // Rows of each group, then moments of each group's values.
    let mut rows: BTreeMap<Vec<Key>, Vec<u32>> = BTreeMap::new();
    for row in 0..batch.num_rows() {
        let key: Vec<Key> = key_columns.iter().map(|c| key_at(c, row)).collect();
        rows.entry(key).or_default().push(row as u32);
    }
    let mut out = Vec::with_capacity(rows.len());
    for (key, members) in rows {
        let index = arrow_array::UInt32Array::from(members);
        let mut moments = Vec::with_capacity(values.len());
        for (column, (_, spread)) in value_columns.iter().zip(values) {
            let taken = arrow_select::take::take(column, &index, None).map_err(arrow_error)?;
            moments.push(Moments::of(&taken, *spread)?);
        }
        out.push((key, moments));
    }
    Ok(out)
}

/// Keys of smaller integer types as Int64, so they compare alike across partitions.
fn normalize_key(a: &ArrayRef) -> Result<ArrayRef> {
    Ok(match a.data_type() {
        t if t.is_integer() && t != &DataType::Int64 => {
            cast(a, &DataType::Int64).map_err(arrow_error)?
        }
        DataType::Float32 | DataType::Float16 => {
            cast(a, &DataType::Float64).map_err(arrow_error)?
        }
        DataType::LargeUtf8 | DataType::Utf8View => {
            cast(a, &DataType::Utf8).map_err(arrow_error)?
        }
        _ => a.clone(),
    })
}

/// A batch in Arrow's IPC stream format, as a [`Blob`].
pub fn encode_batch(batch: &RecordBatch) -> Result<Blob> {
    let mut out = Vec::with_capacity(batch.get_array_memory_size() + 1024);
    {
        let mut writer = StreamWriter::try_new(&mut out, &batch.schema()).map_err(arrow_error)?;
        writer.write(batch).map_err(arrow_error)?;
        writer.finish().map_err(arrow_error)?;
    }
    Ok(Blob::from(out))
}

/// A batch from IPC bytes, without copying them: the arrays point into `bytes`.
pub fn decode_batch(bytes: &Bytes) -> Result<RecordBatch> {
    let mut buffer = Buffer::from(bytes.clone());
    let mut decoder = StreamDecoder::new();
    let mut batches = Vec::new();
    while !buffer.is_empty() {
        match decoder.decode(&mut buffer).map_err(arrow_error)? {
            Some(b) => batches.push(b),
            None => {
                if buffer.is_empty() {
                    break;
                }
            }
        }
    }
    decoder.finish().map_err(arrow_error)?;
    match batches.len() {
        1 => Ok(batches.pop().expect("one batch")),
        0 => Err(invalid("a dataframe partition holds no batch")),
        _ => {
            let schema = batches[0].schema();
            arrow_select::concat::concat_batches(&schema, &batches).map_err(arrow_error)
        }
    }
}

/// Where a dataframe's partitions come from.
enum Source {
    /// Batches in the cluster.
    Batches(Vec<ObjectRef<Blob>>),
    /// Ranges of CSV files.
    Csv(Vec<CsvRange>),
}

/// A partitioned dataframe: a source of partitions and the steps to apply to each.
#[derive(Clone)]
pub struct DataFrame {
    rt: Runtime,
    source: Arc<Source>,
    /// The source's columns.
    source_schema: SchemaRef,
    /// The columns after the steps.
    schema: SchemaRef,
    steps: Vec<Step>,
}

impl std::fmt::Debug for DataFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataFrame")
            .field("partitions", &self.npartitions())
            .field("schema", &self.schema)
            .field("steps", &self.steps)
            .finish()
    }
}

impl DataFrame {
    /// A dataframe of `batches` (all of one schema), cut into `npartitions` partitions of about
    /// equal rows, put into the cluster.
    pub async fn from_batches(
        rt: &Runtime,
        batches: &[RecordBatch],
        npartitions: usize,
    ) -> Result<DataFrame> {
        let first = batches
            .first()
            .ok_or_else(|| invalid("from_batches needs at least one batch (for the schema)"))?;
        let schema = first.schema();
        let all = arrow_select::concat::concat_batches(&schema, batches).map_err(arrow_error)?;
        let n = npartitions.max(1);
        let rows = all.num_rows();
        let mut refs = Vec::with_capacity(n);
        for i in 0..n {
            let (start, end) = (rows * i / n, rows * (i + 1) / n);
            let blob = encode_batch(&all.slice(start, end - start))?;
            refs.push(rt.put(&blob).await?);
        }
        Ok(DataFrame::of_batches(rt, refs, schema))
    }

    /// A dataframe of named columns of equal length.
    pub async fn from_columns(
        rt: &Runtime,
        columns: Vec<(&str, ArrayRef)>,
        npartitions: usize,
    ) -> Result<DataFrame> {
        let batch = RecordBatch::try_from_iter(columns).map_err(arrow_error)?;
        DataFrame::from_batches(rt, &[batch], npartitions).await
    }

    fn of_batches(rt: &Runtime, refs: Vec<ObjectRef<Blob>>, schema: SchemaRef) -> DataFrame {
        DataFrame {
            rt: rt.clone(),
            source: Arc::new(Source::Batches(refs)),
            source_schema: schema.clone(),
            schema,
            steps: Vec::new(),
        }
    }

    /// Reads CSV files (a path or a glob) with a header line, in blocks of about 64 MiB.
    pub fn read_csv(rt: &Runtime, pattern: &str) -> Result<DataFrame> {
        DataFrame::read_csv_with(rt, pattern, &CsvOptions::default())
    }

    /// Reads CSV files with options: block size, header, delimiter, schema.
    pub fn read_csv_with(rt: &Runtime, pattern: &str, options: &CsvOptions) -> Result<DataFrame> {
        let files = csv::expand(pattern)?;
        let columns: Vec<(String, csv::ColType)> = match &options.schema {
            Some(s) => s
                .fields()
                .iter()
                .map(|f| (f.name().clone(), csv::ColType::of(f.data_type())))
                .collect(),
            None => csv::infer(&files[0], options.block, options.header, options.delimiter)?,
        };
        let mut ranges = Vec::new();
        for f in &files {
            for (start, end) in csv::split(f, options.block, options.header)? {
                ranges.push(CsvRange {
                    path: f.clone(),
                    start,
                    end,
                    columns: columns.clone(),
                    delimiter: options.delimiter,
                });
            }
        }
        let schema = csv::schema_of(&columns);
        Ok(DataFrame {
            rt: rt.clone(),
            source: Arc::new(Source::Csv(ranges)),
            source_schema: schema.clone(),
            schema,
            steps: Vec::new(),
        })
    }

    /// The columns.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// The column names.
    pub fn columns(&self) -> Vec<String> {
        self.schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect()
    }

    /// How many partitions.
    pub fn npartitions(&self) -> usize {
        match &*self.source {
            Source::Batches(r) => r.len(),
            Source::Csv(r) => r.len(),
        }
    }

    fn with_step(&self, step: Step, schema: SchemaRef) -> DataFrame {
        let mut out = self.clone();
        out.steps.push(step);
        out.schema = schema;
        out
    }

    /// Only these columns, in this order.
    pub fn select(&self, names: &[&str]) -> Result<DataFrame> {
        let mut fields = Vec::new();
        for n in names {
            let f = self
                .schema
                .field_with_name(n)
                .map_err(|_| invalid(no_such_column(n, &self.schema)))?;
            fields.push(f.clone());
        }
        let names = names.iter().map(|n| n.to_string()).collect();
        Ok(self.with_step(Step::Select(names), Arc::new(Schema::new(fields))))
    }

    /// Only the rows where `predicate` (a boolean expression) holds.
    pub fn filter(&self, predicate: Expr) -> Result<DataFrame> {
        let t = predicate.data_type(&self.schema)?;
        if t != DataType::Boolean {
            return Err(invalid(format!(
                "a filter must be boolean, and {} is {t}",
                predicate.name()
            )));
        }
        Ok(self.with_step(Step::Filter(predicate), self.schema.clone()))
    }

    /// Adds the column `name` (or replaces it) with the values of `value`.
    pub fn with_column(&self, name: &str, value: Expr) -> Result<DataFrame> {
        let t = value.data_type(&self.schema)?;
        let mut fields: Vec<Field> = self
            .schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        let field = Field::new(name, t, true);
        match self.schema.index_of(name) {
            Ok(i) => fields[i] = field,
            Err(_) => fields.push(field),
        }
        Ok(self.with_step(
            Step::WithColumn(name.to_string(), value),
            Arc::new(Schema::new(fields)),
        ))
    }

    /// The source columns a plan reads: those its steps and `action` name, and, when it
    /// returns rows, those it returns.
    fn needed(&self, action: &Action) -> Option<Vec<String>> {
        let mut used = Vec::new();
        for s in &self.steps {
            match s {
                Step::Select(n) => used.extend(n.iter().cloned()),
                Step::Filter(e) => e.columns(&mut used),
                Step::WithColumn(_, e) => e.columns(&mut used),
            }
        }
        match action {
            Action::Materialize | Action::Head(_) => used.extend(self.columns()),
            Action::Aggregate(v) => v.iter().flatten_exprs(&mut used),
            Action::GroupBy { keys, values } => {
                used.extend(keys.iter().cloned());
                for (e, _) in values {
                    e.columns(&mut used);
                }
            }
        }
        Some(
            self.source_schema
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .filter(|n| used.contains(n))
                .collect(),
        )
    }

    /// Submits one task per partition running the plan and then `action`.
    fn run<T>(&self, action: Action) -> Result<Vec<ObjectRef<T>>> {
        let needed = self.needed(&action);
        let stage = action.stage();
        let query = |scan| Query {
            scan,
            needed: needed.clone(),
            steps: self.steps.clone(),
            action: action.clone(),
        };
        match &*self.source {
            Source::Batches(refs) => refs
                .iter()
                .map(|r| {
                    call(
                        &self.rt,
                        QUERY,
                        stage,
                        &query(Scan::Batch),
                        std::slice::from_ref(r),
                    )
                })
                .collect(),
            Source::Csv(ranges) => ranges
                .iter()
                .map(|r| call(&self.rt, QUERY, stage, &query(Scan::Csv(r.clone())), &[]))
                .collect(),
        }
    }

    /// The references of the partitions (after the plan's steps), for plain tasks to use.
    /// Each holds a batch in Arrow's IPC stream format: [`decode_batch`] reads it.
    pub fn partitions(&self) -> Result<Vec<ObjectRef<Blob>>> {
        if let (Source::Batches(refs), true) = (&*self.source, self.steps.is_empty()) {
            return Ok(refs.clone());
        }
        self.run(Action::Materialize)
    }

    /// Runs the plan and keeps its partitions in the cluster: later queries start from them.
    pub async fn persist(&self) -> Result<DataFrame> {
        let refs = self.partitions()?;
        progress::watch(&self.rt, "persist", &refs).await?;
        Ok(DataFrame::of_batches(&self.rt, refs, self.schema.clone()))
    }

    /// Aggregates of several expressions in one pass: `[(col("x"), Agg::Mean), …]`.
    pub async fn agg(&self, aggs: &[(Expr, Agg)]) -> Result<Vec<f64>> {
        let mut values = Vec::with_capacity(aggs.len());
        for (e, a) in aggs {
            self.check_numeric(e, *a)?;
            values.push((Some(e.clone()), *a == Agg::Std));
        }
        let partials = self.partials(values).await?;
        Ok(aggs
            .iter()
            .zip(partials)
            .map(|((_, a), m)| m.value(*a))
            .collect())
    }

    async fn partials(&self, values: Vec<(Option<Expr>, bool)>) -> Result<Vec<Moments>> {
        let n = values.len();
        let refs = self.run::<Vec<Moments>>(Action::Aggregate(values))?;
        let tree = combine::tree(&self.rt, "dataframe.combine", MergeMoments, &refs)?;
        progress::watch(&self.rt, "aggregate", &refs).await?;
        let mut total = tree.total(&self.rt).await?;
        total.resize(n, Moments::default());
        Ok(total)
    }

    fn check_numeric(&self, e: &Expr, agg: Agg) -> Result<()> {
        let t = e.data_type(&self.schema)?;
        if !t.is_numeric() && !(agg == Agg::Count) {
            return Err(invalid(format!(
                "cannot take the {} of {}: it is {t}, not a number",
                agg.name(),
                e.name()
            )));
        }
        Ok(())
    }

    async fn one(&self, column: &str, agg: Agg) -> Result<f64> {
        Ok(self.agg(&[(expr::col(column), agg)]).await?[0])
    }

    /// The sum of a column.
    pub async fn sum(&self, column: &str) -> Result<f64> {
        self.one(column, Agg::Sum).await
    }
    /// The mean of a column.
    pub async fn mean(&self, column: &str) -> Result<f64> {
        self.one(column, Agg::Mean).await
    }
    /// The smallest value of a column.
    pub async fn min(&self, column: &str) -> Result<f64> {
        self.one(column, Agg::Min).await
    }
    /// The largest value of a column.
    pub async fn max(&self, column: &str) -> Result<f64> {
        self.one(column, Agg::Max).await
    }
    /// The values of a column that are not null.
    pub async fn count(&self, column: &str) -> Result<u64> {
        Ok(self.one(column, Agg::Count).await? as u64)
    }
    /// The sample standard deviation of a column.
    pub async fn std(&self, column: &str) -> Result<f64> {
        self.one(column, Agg::Std).await
    }

    /// The aggregate of every numeric column, by name.
    pub async fn agg_all(&self, agg: Agg) -> Result<Vec<(String, f64)>> {
        let names = self.numeric_columns();
        let aggs: Vec<(Expr, Agg)> = names.iter().map(|n| (expr::col(n), agg)).collect();
        let values = self.agg(&aggs).await?;
        Ok(names.into_iter().zip(values).collect())
    }

    fn numeric_columns(&self) -> Vec<String> {
        self.schema
            .fields()
            .iter()
            .filter(|f| f.data_type().is_numeric())
            .map(|f| f.name().clone())
            .collect()
    }

    /// How many rows.
    pub async fn len(&self) -> Result<u64> {
        Ok(self.partials(vec![(None, false)]).await?[0].count)
    }

    /// Whether there are no rows.
    pub async fn is_empty(&self) -> Result<bool> {
        Ok(self.len().await? == 0)
    }

    /// Count, mean, std, min and max of each numeric column: one row per statistic.
    pub async fn describe(&self) -> Result<RecordBatch> {
        let names = self.numeric_columns();
        let values: Vec<(Option<Expr>, bool)> =
            names.iter().map(|n| (Some(expr::col(n)), true)).collect();
        let moments = self.partials(values).await?;
        let stats = [Agg::Count, Agg::Mean, Agg::Std, Agg::Min, Agg::Max];
        let mut columns: Vec<(&str, ArrayRef)> = vec![(
            "statistic",
            Arc::new(StringArray::from(
                stats.iter().map(|s| s.name()).collect::<Vec<_>>(),
            )),
        )];
        for (name, m) in names.iter().zip(&moments) {
            let v: Vec<f64> = stats.iter().map(|s| m.value(*s)).collect();
            columns.push((name.as_str(), Arc::new(Float64Array::from(v))));
        }
        RecordBatch::try_from_iter(columns).map_err(arrow_error)
    }

    /// The first `n` rows: partitions are read in order until there are enough.
    pub async fn head(&self, n: usize) -> Result<RecordBatch> {
        let needed = self.needed(&Action::Head(n));
        let mut got = Vec::new();
        let mut rows = 0;
        let parts = self.npartitions();
        for i in 0..parts {
            if rows >= n {
                break;
            }
            let query = Query {
                scan: Scan::Batch,
                needed: needed.clone(),
                steps: self.steps.clone(),
                action: Action::Head(n - rows),
            };
            let r: ObjectRef<Blob> = match &*self.source {
                Source::Batches(refs) => call(
                    &self.rt,
                    QUERY,
                    "dataframe.head",
                    &query,
                    std::slice::from_ref(&refs[i]),
                )?,
                Source::Csv(ranges) => call(
                    &self.rt,
                    QUERY,
                    "dataframe.head",
                    &Query {
                        scan: Scan::Csv(ranges[i].clone()),
                        ..query
                    },
                    &[],
                )?,
            };
            let batch = decode_batch(&self.rt.get(&r).await?.0)?;
            rows += batch.num_rows();
            got.push(batch);
        }
        if got.is_empty() {
            return Ok(RecordBatch::new_empty(self.schema.clone()));
        }
        arrow_select::concat::concat_batches(&got[0].schema(), &got).map_err(arrow_error)
    }

    /// Every row, in the driver.
    pub async fn collect(&self) -> Result<RecordBatch> {
        let refs = self.partitions()?;
        progress::watch(&self.rt, "collect", &refs).await?;
        let mut batches = Vec::with_capacity(refs.len());
        for r in &refs {
            batches.push(decode_batch(&self.rt.get(r).await?.0)?);
        }
        if batches.is_empty() {
            return Ok(RecordBatch::new_empty(self.schema.clone()));
        }
        arrow_select::concat::concat_batches(&batches[0].schema(), &batches).map_err(arrow_error)
    }

    /// Applies a remote function `fn(Blob) -> Blob` to each partition (a batch in IPC form:
    /// [`decode_batch`] and [`encode_batch`] convert). The new schema is read from the first
    /// result.
    pub async fn map_partitions<F>(&self, _f: F) -> Result<DataFrame>
    where
        F: Remote<Args = (Blob,), Output = Blob>,
    {
        let parts = self.partitions()?;
        let refs: Vec<ObjectRef<Blob>> = parts
            .iter()
            .map(|p| {
                let mut list = crate::driver::object_ref::ArgList::new();
                crate::driver::object_ref::IntoArg::<Blob>::push_to(p, &mut list);
                self.rt.call_function(F::NAME, F::SIGNATURE, list, None)
            })
            .collect();
        progress::watch(&self.rt, "map_partitions", &refs).await?;
        let schema = match refs.first() {
            Some(r) => decode_batch(&self.rt.get(r).await?.0)?.schema(),
            None => self.schema.clone(),
        };
        Ok(DataFrame::of_batches(&self.rt, refs, schema))
    }

    /// Groups rows by the values of `keys`, for [`GroupBy::agg`].
    pub fn groupby(&self, keys: &[&str]) -> Result<GroupBy> {
        for k in keys {
            self.schema
                .field_with_name(k)
                .map_err(|_| invalid(no_such_column(k, &self.schema)))?;
        }
        Ok(GroupBy {
            df: self.clone(),
            keys: keys.iter().map(|k| k.to_string()).collect(),
        })
    }
}

trait FlattenExprs {
    fn flatten_exprs(self, out: &mut Vec<String>);
}

impl<'a, I: Iterator<Item = &'a (Option<Expr>, bool)>> FlattenExprs for I {
    fn flatten_exprs(self, out: &mut Vec<String>) {
        for (e, _) in self {
            if let Some(e) = e {
                e.columns(out);
            }
        }
    }
}

/// Rows grouped by key columns.
pub struct GroupBy {
    df: DataFrame,
    keys: Vec<String>,
}

impl GroupBy {
    /// Aggregates per group: one row per group (in key order), the key columns, then a
    /// Float64 column `agg(expr)` per aggregate. Partials of each partition are combined in
    /// a tree of tasks.
    pub async fn agg(&self, aggs: &[(Expr, Agg)]) -> Result<RecordBatch> {
        for (e, a) in aggs {
            self.df.check_numeric(e, *a)?;
        }
        let values = aggs
            .iter()
            .map(|(e, a)| (e.clone(), *a == Agg::Std))
            .collect();
        let refs = self.df.run::<Groups>(Action::GroupBy {
            keys: self.keys.clone(),
            values,
        })?;
        let tree = combine::tree(&self.df.rt, "dataframe.combine", MergeGroups, &refs)?;
        progress::watch(&self.df.rt, "groupby", &refs).await?;
        let mut total = tree.total(&self.df.rt).await?;
        for moments in total.values_mut() {
            moments.resize(aggs.len(), Moments::default());
        }
        let mut columns: Vec<(String, ArrayRef)> = Vec::new();
        for (i, k) in self.keys.iter().enumerate() {
            let keys: Vec<&Key> = total.keys().map(|key| &key[i]).collect();
            columns.push((k.clone(), key_array(&keys)));
        }
        for (j, (e, a)) in aggs.iter().enumerate() {
            let v: Vec<f64> = total.values().map(|m| m[j].value(*a)).collect();
            columns.push((
                format!("{}({})", a.name(), e.name()),
                Arc::new(Float64Array::from(v)),
            ));
        }
        RecordBatch::try_from_iter(columns).map_err(arrow_error)
    }
}

fn key_array(keys: &[&Key]) -> ArrayRef {
    let first = keys.iter().find(|k| !matches!(k, Key::Null));
    match first {
        Some(Key::Text(_)) => Arc::new(StringArray::from(
            keys.iter()
                .map(|k| match k {
                    Key::Text(s) => Some(s.as_str()),
                    _ => None,
                })
                .collect::<Vec<_>>(),
        )),
        Some(Key::Bool(_)) => Arc::new(BooleanArray::from(
            keys.iter()
                .map(|k| match k {
                    Key::Bool(b) => Some(*b),
                    _ => None,
                })
                .collect::<Vec<_>>(),
        )),
        Some(Key::Float(_)) => Arc::new(Float64Array::from(
            keys.iter()
                .map(|k| match k {
                    Key::Float(b) => Some(f64::from_bits(*b)),
                    _ => None,
                })
                .collect::<Vec<_>>(),
        )),
        _ => Arc::new(Int64Array::from(
            keys.iter()
                .map(|k| match k {
                    Key::Int(v) => Some(*v),
                    _ => None,
                })
                .collect::<Vec<_>>(),
        )),
    }
}
