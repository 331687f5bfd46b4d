//! The seed article's first Ray example: a remote function called on the cluster.
//!
//! `cargo run --example square` prints 25. With no `FLOTILLA_HEAD` it starts a local cluster in
//! this process; with one it runs on that cluster.

#[flotilla::remote]
fn square(x: i64) -> i64 {
    x * x
}

#[flotilla::main]
async fn main(rt: flotilla::Runtime) -> flotilla::Result<()> {
    let result = square.remote(&rt, 5);
    println!("{}", result.await?);
    Ok(())
}
