//! The seed article's large CSV: writes `large_data.csv` (`col1`, `col2 = 2 * col1`) if it is
//! missing, reads it as a dataframe in blocks and prints the mean of `col2`. Only `col2` is
//! decoded; each block's task returns a partial sum.
//!
//! `cargo run --release --example csv_mean [PATH] [ROWS]`: PATH defaults to `large_data.csv` in
//! the temp directory, ROWS to 1,000,000 (as in the article).

use flotilla::{collections::dataframe::csv, DataFrame};

#[flotilla::main]
async fn main(rt: flotilla::Runtime) -> flotilla::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("large_data.csv"));
    let rows: u64 = match args.next() {
        Some(r) => r
            .parse()
            .map_err(|e| flotilla::Error::Invalid(format!("ROWS {r:?}: {e}")))?,
        None => 1_000_000,
    };
    if !path.exists() {
        csv::write_example(&path, rows)
            .map_err(|e| flotilla::Error::io(format!("writing {}", path.display()), e))?;
        println!("wrote {} ({rows} rows)", path.display());
    }
    let start = std::time::Instant::now();
    let df = DataFrame::read_csv(&rt, &path.to_string_lossy())?;
    let mean = df.mean("col2").await?;
    println!(
        "mean of col2 in {}: {mean} ({} partitions) in {:.1} ms",
        path.display(),
        df.npartitions(),
        start.elapsed().as_secs_f64() * 1e3
    );
    Ok(())
}
