//! The seed article's Dask dataframe: 1,000,000 rows of `x` and `y` in 10 partitions, and the
//! mean of `x`. Each partition's task returns a partial (count and sum); the driver combines them.
//!
//! `cargo run --release --example dataframe_mean` prints 499999.5 and the time it took.

use std::sync::Arc;

use arrow_array::{ArrayRef, Float64Array, Int64Array};
use flotilla::DataFrame;

#[flotilla::main]
async fn main(rt: flotilla::Runtime) -> flotilla::Result<()> {
    let n = 1_000_000i64;
    let x: Int64Array = (0..n).collect();
    let y: Float64Array = (0..n).map(|i| i as f64 * 2.0).collect();
    let df = DataFrame::from_columns(
        &rt,
        vec![
            ("x", Arc::new(x) as ArrayRef),
            ("y", Arc::new(y) as ArrayRef),
        ],
        10,
    )
    .await?;
    let start = std::time::Instant::now();
    let mean = df.mean("x").await?;
    println!(
        "mean of x over {n} rows in {} partitions: {mean} in {:.1} ms",
        df.npartitions(),
        start.elapsed().as_secs_f64() * 1e3
    );
    Ok(())
}
