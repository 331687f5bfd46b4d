//! Column expressions as data: `col("a") + col("b")`, `col("x").gt(lit(3))`. They travel to
//! workers inside plans and are evaluated there with Arrow's compute kernels; their types are
//! checked against the schema when the query is built.

use std::sync::Arc;

use arrow_arith::{boolean, numeric};
use arrow_array::{
    Array, ArrayRef, BooleanArray, Datum, Float64Array, Int64Array, RecordBatch, Scalar,
    StringArray,
};
use arrow_cast::cast;
use arrow_ord::cmp;
use arrow_schema::{DataType, Schema};
use serde::{Deserialize, Serialize};

use crate::{collections::invalid, error::Result};

/// A literal value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Lit {
    /// A 64-bit integer.
    Int(i64),
    /// A 64-bit float.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// A string.
    Str(String),
}

/// A binary operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BinOp {
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
    /// `==`
    Eq,
    /// `!=`
    NotEq,
    /// `<`
    Lt,
    /// `<=`
    LtEq,
    /// `>`
    Gt,
    /// `>=`
    GtEq,
    /// logical and
    And,
    /// logical or
    Or,
}

impl BinOp {
    fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Eq => "==",
            BinOp::NotEq => "!=",
            BinOp::Lt => "<",
            BinOp::LtEq => "<=",
            BinOp::Gt => ">",
            BinOp::GtEq => ">=",
            BinOp::And => "and",
            BinOp::Or => "or",
        }
    }

    fn is_arithmetic(self) -> bool {
        matches!(self, BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div)
    }

    fn is_logical(self) -> bool {
        matches!(self, BinOp::And | BinOp::Or)
    }
}

/// An expression over the columns of a record batch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Expr {
    /// A column by name.
    Col(String),
    /// A literal.
    Lit(Lit),
    /// A binary operation.
    Bin(Box<Expr>, BinOp, Box<Expr>),
    /// Logical not.
    Not(Box<Expr>),
}

/// A column by name.
pub fn col(name: &str) -> Expr {
    Expr::Col(name.to_string())
}

/// A literal: `lit(3)`, `lit(2.5)`, `lit("a")`, `lit(true)`.
pub fn lit(value: impl Into<Lit>) -> Expr {
    Expr::Lit(value.into())
}

impl From<i64> for Lit {
    fn from(v: i64) -> Self {
        Lit::Int(v)
    }
}
impl From<i32> for Lit {
    fn from(v: i32) -> Self {
        Lit::Int(v.into())
    }
}
impl From<f64> for Lit {
    fn from(v: f64) -> Self {
        Lit::Float(v)
    }
}
impl From<bool> for Lit {
    fn from(v: bool) -> Self {
        Lit::Bool(v)
    }
}
impl From<&str> for Lit {
    fn from(v: &str) -> Self {
        Lit::Str(v.to_string())
    }
}

macro_rules! arith {
    ($trait:ident, $method:ident, $op:expr) => {
        impl std::ops::$trait for Expr {
            type Output = Expr;
            fn $method(self, rhs: Expr) -> Expr {
                Expr::Bin(Box::new(self), $op, Box::new(rhs))
            }
        }
        impl std::ops::$trait<f64> for Expr {
            type Output = Expr;
            fn $method(self, rhs: f64) -> Expr {
                Expr::Bin(Box::new(self), $op, Box::new(lit(rhs)))
            }
        }
        impl std::ops::$trait<i64> for Expr {
            type Output = Expr;
            fn $method(self, rhs: i64) -> Expr {
                Expr::Bin(Box::new(self), $op, Box::new(lit(rhs)))
            }
        }
    };
}
arith!(Add, add, BinOp::Add);
arith!(Sub, sub, BinOp::Sub);
arith!(Mul, mul, BinOp::Mul);
arith!(Div, div, BinOp::Div);

impl std::ops::Not for Expr {
    type Output = Expr;
    fn not(self) -> Expr {
        Expr::Not(Box::new(self))
    }
}

impl Expr {
    fn bin(self, op: BinOp, rhs: impl Into<Expr>) -> Expr {
        Expr::Bin(Box::new(self), op, Box::new(rhs.into()))
    }
    /// `self == rhs`
    pub fn eq(self, rhs: impl Into<Expr>) -> Expr {
        self.bin(BinOp::Eq, rhs)
    }
    /// `self != rhs`
    pub fn not_eq(self, rhs: impl Into<Expr>) -> Expr {
        self.bin(BinOp::NotEq, rhs)
    }
    /// `self < rhs`
    pub fn lt(self, rhs: impl Into<Expr>) -> Expr {
        self.bin(BinOp::Lt, rhs)
    }
    /// `self <= rhs`
    pub fn lt_eq(self, rhs: impl Into<Expr>) -> Expr {
        self.bin(BinOp::LtEq, rhs)
    }
    /// `self > rhs`
    pub fn gt(self, rhs: impl Into<Expr>) -> Expr {
        self.bin(BinOp::Gt, rhs)
    }
    /// `self >= rhs`
    pub fn gt_eq(self, rhs: impl Into<Expr>) -> Expr {
        self.bin(BinOp::GtEq, rhs)
    }
    /// Logical and.
    pub fn and(self, rhs: impl Into<Expr>) -> Expr {
        self.bin(BinOp::And, rhs)
    }
    /// Logical or.
    pub fn or(self, rhs: impl Into<Expr>) -> Expr {
        self.bin(BinOp::Or, rhs)
    }

    /// The columns the expression reads, added to `out` in order of first use.
    pub fn columns(&self, out: &mut Vec<String>) {
        match self {
            Expr::Col(c) => {
                if !out.contains(c) {
                    out.push(c.clone());
                }
            }
            Expr::Lit(_) => {}
            Expr::Bin(a, _, b) => {
                a.columns(out);
                b.columns(out);
            }
            Expr::Not(a) => a.columns(out),
        }
    }

    /// A name for the expression's result: the column's own name, or its text.
    pub fn name(&self) -> String {
        match self {
            Expr::Col(c) => c.clone(),
            Expr::Lit(l) => match l {
                Lit::Int(v) => v.to_string(),
                Lit::Float(v) => v.to_string(),
                Lit::Bool(v) => v.to_string(),
                Lit::Str(v) => format!("{v:?}"),
            },
            Expr::Bin(a, op, b) => format!("({} {} {})", a.name(), op.symbol(), b.name()),
            Expr::Not(a) => format!("not {}", a.name()),
        }
    }

    /// The type of the result over `schema`, or why the expression does not fit it (a column
    /// that is not there, names the ones that are).
    pub fn data_type(&self, schema: &Schema) -> Result<DataType> {
        match self {
            Expr::Col(c) => schema
                .field_with_name(c)
                .map(|f| f.data_type().clone())
                .map_err(|_| invalid(no_such_column(c, schema))),
            Expr::Lit(l) => Ok(match l {
                Lit::Int(_) => DataType::Int64,
                Lit::Float(_) => DataType::Float64,
                Lit::Bool(_) => DataType::Boolean,
                Lit::Str(_) => DataType::Utf8,
            }),
            Expr::Not(a) => {
                let t = a.data_type(schema)?;
                if t != DataType::Boolean {
                    return Err(invalid(format!(
                        "`not` needs a boolean, and {} is {t}",
                        a.name()
                    )));
                }
                Ok(DataType::Boolean)
            }
            Expr::Bin(a, op, b) => {
                let (ta, tb) = (a.data_type(schema)?, b.data_type(schema)?);
                let mismatch = || {
                    invalid(format!(
                        "cannot apply `{}` to {} ({ta}) and {} ({tb})",
                        op.symbol(),
                        a.name(),
                        b.name()
                    ))
                };
                if op.is_arithmetic() {
                    if !(ta.is_numeric() && tb.is_numeric()) {
                        return Err(mismatch());
                    }
                    Ok(if ta == tb && *op != BinOp::Div {
                        ta
                    } else {
                        DataType::Float64
                    })
                } else if op.is_logical() {
                    if ta != DataType::Boolean || tb != DataType::Boolean {
                        return Err(mismatch());
                    }
                    Ok(DataType::Boolean)
                } else {
                    let comparable = (ta.is_numeric() && tb.is_numeric()) || ta == tb;
                    if !comparable {
                        return Err(mismatch());
                    }
                    Ok(DataType::Boolean)
                }
            }
        }
    }

    /// Evaluates the expression over `batch`.
    pub fn eval(&self, batch: &RecordBatch) -> Result<ArrayRef> {
        match self.eval_value(batch)? {
            Value::Array(a) => Ok(a),
            Value::Scalar(s) => {
                // A literal alone: repeated to the batch's length.
                let index = arrow_array::UInt32Array::from(vec![0u32; batch.num_rows()]);
                arrow_select::take::take(&s, &index, None).map_err(arrow_error)
            }
        }
    }

    fn eval_value(&self, batch: &RecordBatch) -> Result<Value> {
        Ok(match self {
            Expr::Col(c) => Value::Array(
                batch
                    .column_by_name(c)
                    .cloned()
                    .ok_or_else(|| invalid(no_such_column(c, &batch.schema())))?,
            ),
            Expr::Lit(l) => Value::Scalar(match l {
                Lit::Int(v) => Arc::new(Int64Array::from(vec![*v])) as ArrayRef,
                Lit::Float(v) => Arc::new(Float64Array::from(vec![*v])),
                Lit::Bool(v) => Arc::new(BooleanArray::from(vec![*v])),
                Lit::Str(v) => Arc::new(StringArray::from(vec![v.as_str()])),
            }),
            Expr::Not(a) => {
                let v = a.eval(batch)?;
                let b = v
                    .as_any()
                    .downcast_ref::<BooleanArray>()
                    .ok_or_else(|| invalid(format!("`not` needs a boolean: {}", a.name())))?;
                Value::Array(Arc::new(boolean::not(b).map_err(arrow_error)?))
            }
            Expr::Bin(a, op, b) => {
                let (va, vb) = (a.eval_value(batch)?, b.eval_value(batch)?);
                let (va, vb) = if op.is_logical() {
                    (va, vb)
                } else {
                    unify(va, vb, *op)?
                };
                let out = apply(&va, *op, &vb)?;
                if matches!((&va, &vb), (Value::Scalar(_), Value::Scalar(_))) {
                    Value::Scalar(out)
                } else {
                    Value::Array(out)
                }
            }
        })
    }
}

impl From<Lit> for Expr {
    fn from(l: Lit) -> Self {
        Expr::Lit(l)
    }
}
impl From<i64> for Expr {
    fn from(v: i64) -> Self {
        lit(v)
    }
}
impl From<i32> for Expr {
    fn from(v: i32) -> Self {
        lit(v)
    }
}
impl From<f64> for Expr {
    fn from(v: f64) -> Self {
        lit(v)
    }
}
impl From<&str> for Expr {
    fn from(v: &str) -> Self {
        lit(v)
    }
}

/// The message for a column that is not in `schema`.
pub(crate) fn no_such_column(name: &str, schema: &Schema) -> String {
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    format!("no column {name:?}; the columns are {}", names.join(", "))
}

pub(crate) fn arrow_error(e: arrow_schema::ArrowError) -> crate::error::Error {
    invalid(e.to_string())
}

/// An evaluated operand: a column, or a literal of length one.
enum Value {
    Array(ArrayRef),
    Scalar(ArrayRef),
}

impl Value {
    fn array(&self) -> &ArrayRef {
        match self {
            Value::Array(a) | Value::Scalar(a) => a,
        }
    }

    fn map(self, f: impl FnOnce(ArrayRef) -> Result<ArrayRef>) -> Result<Value> {
        Ok(match self {
            Value::Array(a) => Value::Array(f(a)?),
            Value::Scalar(a) => Value::Scalar(f(a)?),
        })
    }
}

/// Casts numeric operands of different types (and both sides of a division) to Float64, as the
/// kernels want equal types.
fn unify(a: Value, b: Value, op: BinOp) -> Result<(Value, Value)> {
    let (ta, tb) = (a.array().data_type().clone(), b.array().data_type().clone());
    let to_float = |v: Value| {
        v.map(|x| {
            if x.data_type() == &DataType::Float64 {
                Ok(x)
            } else {
                cast(&x, &DataType::Float64).map_err(arrow_error)
            }
        })
    };
    if ta.is_numeric() && tb.is_numeric() && (ta != tb || op == BinOp::Div) {
        Ok((to_float(a)?, to_float(b)?))
    } else {
        Ok((a, b))
    }
}

fn datum(v: &Value) -> Box<dyn Datum + '_> {
    match v {
        Value::Array(a) => Box::new(a),
        Value::Scalar(a) => Box::new(Scalar::new(a.clone())),
    }
}

fn apply(a: &Value, op: BinOp, b: &Value) -> Result<ArrayRef> {
    let (da, db) = (datum(a), datum(b));
    let (da, db) = (da.as_ref(), db.as_ref());
    let out: ArrayRef = match op {
        BinOp::Add => numeric::add(da, db).map_err(arrow_error)?,
        BinOp::Sub => numeric::sub(da, db).map_err(arrow_error)?,
        BinOp::Mul => numeric::mul(da, db).map_err(arrow_error)?,
        BinOp::Div => numeric::div(da, db).map_err(arrow_error)?,
        BinOp::Eq => Arc::new(cmp::eq(da, db).map_err(arrow_error)?),
        BinOp::NotEq => Arc::new(cmp::neq(da, db).map_err(arrow_error)?),
        BinOp::Lt => Arc::new(cmp::lt(da, db).map_err(arrow_error)?),
        BinOp::LtEq => Arc::new(cmp::lt_eq(da, db).map_err(arrow_error)?),
        BinOp::Gt => Arc::new(cmp::gt(da, db).map_err(arrow_error)?),
        BinOp::GtEq => Arc::new(cmp::gt_eq(da, db).map_err(arrow_error)?),
        BinOp::And | BinOp::Or => {
            let bool_of = |v: &Value| -> Result<BooleanArray> {
                let arr = v.array();
                let b = arr
                    .as_any()
                    .downcast_ref::<BooleanArray>()
                    .ok_or_else(|| invalid("`and`/`or` need booleans"))?;
                Ok(b.clone())
            };
            let (x, y) = (bool_of(a)?, bool_of(b)?);
            let (x, y) = broadcast(x, y);
            Arc::new(
                if op == BinOp::And {
                    boolean::and_kleene(&x, &y)
                } else {
                    boolean::or_kleene(&x, &y)
                }
                .map_err(arrow_error)?,
            )
        }
    };
    Ok(out)
}

/// Repeats a boolean of length one to the other's length.
fn broadcast(x: BooleanArray, y: BooleanArray) -> (BooleanArray, BooleanArray) {
    let grow = |one: &BooleanArray, n: usize| {
        let v = one.is_valid(0).then(|| one.value(0));
        BooleanArray::from(vec![v; n])
    };
    match (x.len(), y.len()) {
        (1, n) if n != 1 => (grow(&x, n), y),
        (n, 1) if n != 1 => {
            let g = grow(&y, n);
            (x, g)
        }
        _ => (x, y),
    }
}
