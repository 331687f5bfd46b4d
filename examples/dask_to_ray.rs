//! The seed article's hand-over from Dask to Ray: a CSV read as a dataframe, its partitions
//! given to a plain remote function that computes the mean of `col1 + col2` in each, and the
//! partition means averaged (as the article does), and weighted by their rows (the mean of the
//! whole file, 1499998.5 for the article's 1,000,000 rows). The partitions stay in the cluster; only references and the means
//! travel through the driver.
//!
//! `cargo run --release --example dask_to_ray [PATH]` (PATH as `csv_mean`, written if missing).

use arrow_array::{cast::AsArray, types::Int64Type};
use flotilla::{
    collections::dataframe::{csv, decode_batch},
    Blob, DataFrame,
};

/// The mean of `col1 + col2` over one partition, and its rows.
#[flotilla::remote]
fn partition_mean(part: Blob) -> Result<(f64, u64), String> {
    let batch = decode_batch(part.bytes()).map_err(|e| e.to_string())?;
    let column = |name: &str| {
        batch
            .column_by_name(name)
            .ok_or_else(|| format!("no column {name}"))
            .map(|c| c.as_primitive::<Int64Type>().clone())
    };
    let (a, b) = (column("col1")?, column("col2")?);
    let sum: f64 = a
        .values()
        .iter()
        .zip(b.values().iter())
        .map(|(x, y)| (x + y) as f64)
        .sum();
    let rows = batch.num_rows();
    Ok((sum / rows.max(1) as f64, rows as u64))
}

#[flotilla::main]
async fn main(rt: flotilla::Runtime) -> flotilla::Result<()> {
    let path = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("large_data.csv"));
    if !path.exists() {
        csv::write_example(&path, 1_000_000)
            .map_err(|e| flotilla::Error::io(format!("writing {}", path.display()), e))?;
    }
    let start = std::time::Instant::now();
    // Small blocks, so the file makes several partitions as in the article.
    let options = csv::CsvOptions {
        block: 4 << 20,
        ..csv::CsvOptions::default()
    };
    let df = DataFrame::read_csv_with(&rt, &path.to_string_lossy(), &options)?;
    let parts = df.partitions()?;
    let means: Vec<_> = parts
        .iter()
        .map(|p| partition_mean.remote(&rt, p))
        .collect();
    let means = rt.get_all(&means).await?;
    let average = means.iter().map(|m| m.0).sum::<f64>() / means.len() as f64;
    let rows: u64 = means.iter().map(|m| m.1).sum();
    let weighted = means.iter().map(|m| m.0 * m.1 as f64).sum::<f64>() / rows as f64;
    println!(
        "mean of col1 + col2 over {} partitions: {average:.1} averaged, {weighted:.1} weighted by \
         their rows, in {:.1} ms",
        means.len(),
        start.elapsed().as_secs_f64() * 1e3
    );
    Ok(())
}
