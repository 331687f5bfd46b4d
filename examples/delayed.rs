//! The seed article's `dask.delayed`: `inc(1)` and `inc(2)` run in parallel, `add` waits for
//! both; each sleeps one second, so the whole graph takes about two seconds, not three.
//!
//! `cargo run --release --example delayed` prints the graph, 5, and the time it took.

use std::time::Duration;

#[flotilla::remote]
fn inc(x: i64) -> i64 {
    std::thread::sleep(Duration::from_secs(1));
    x + 1
}

#[flotilla::remote]
fn add(x: i64, y: i64) -> i64 {
    std::thread::sleep(Duration::from_secs(1));
    x + y
}

#[flotilla::main]
async fn main(rt: flotilla::Runtime) -> flotilla::Result<()> {
    let x = inc.delayed(1);
    let y = inc.delayed(2);
    let z = add.delayed(x, y);
    println!("{}", z.to_dot());
    let start = std::time::Instant::now();
    let total = z.compute(&rt).await?;
    println!(
        "add(inc(1), inc(2)) = {total} in {:.2} s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
