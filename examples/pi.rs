//! The seed article's Monte Carlo π: 4 tasks of 1,000,000 samples each, run in parallel.
//!
//! `cargo run --release --example pi` prints the estimate and the time it took.

use rand::{rngs::SmallRng, Rng, SeedableRng};

#[flotilla::remote]
fn estimate_pi(samples: u64) -> f64 {
    let mut rng = SmallRng::from_os_rng();
    let inside = (0..samples)
        .filter(|_| {
            let (x, y): (f64, f64) = (rng.random(), rng.random());
            x * x + y * y <= 1.0
        })
        .count();
    4.0 * inside as f64 / samples as f64
}

#[flotilla::main]
async fn main(rt: flotilla::Runtime) -> flotilla::Result<()> {
    let start = std::time::Instant::now();
    let refs: Vec<_> = (0..4).map(|_| estimate_pi.remote(&rt, 1_000_000)).collect();
    let estimates = rt.get_all(&refs).await?;
    let pi = estimates.iter().sum::<f64>() / estimates.len() as f64;
    println!(
        "π ≈ {pi:.5} (4 tasks × 1,000,000 samples) in {:.1} ms",
        start.elapsed().as_secs_f64() * 1e3
    );
    Ok(())
}
