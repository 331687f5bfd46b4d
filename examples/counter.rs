//! The seed article's actor example: a `Counter` whose state lives on a worker.
//!
//! `cargo run --example counter` prints 1, 2, 3 and then the final value, 3.

#[flotilla::actor]
struct Counter {
    value: i64,
}

#[flotilla::actor]
impl Counter {
    fn new() -> Self {
        Counter { value: 0 }
    }

    fn increment(&mut self) -> i64 {
        self.value += 1;
        self.value
    }

    fn get_value(&self) -> i64 {
        self.value
    }
}

#[flotilla::main]
async fn main(rt: flotilla::Runtime) -> flotilla::Result<()> {
    let counter = Counter::remote(&rt).await?;
    for _ in 0..3 {
        println!("{}", counter.increment().await?);
    }
    println!("final value: {}", counter.get_value().await?);
    Ok(())
}
