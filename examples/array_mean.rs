//! The seed article's Dask array: the mean of a 10000×10000 array of uniform random numbers in
//! 1000×1000 chunks. Each chunk is generated and reduced on a worker; only 100 partial sums
//! travel.
//!
//! `cargo run --release --example array_mean` prints the mean (≈ 0.5) and the time it took.

use flotilla::Array;

#[flotilla::main]
async fn main(rt: flotilla::Runtime) -> flotilla::Result<()> {
    let start = std::time::Instant::now();
    let x = Array::random(&rt, (10_000, 10_000), (1_000, 1_000), 42)?;
    let mean = x.mean().await?;
    println!(
        "mean of a 10000×10000 random array in 1000×1000 chunks: {mean:.6} in {:.1} ms",
        start.elapsed().as_secs_f64() * 1e3
    );
    Ok(())
}
