//! Functions and actors built into every Flotilla program: what `flotilla bench` and the tests
//! run on a stock `flotilla` cluster.

use rand::{rngs::SmallRng, Rng, SeedableRng};

use crate::Blob;

/// Does nothing; measures the runtime's own overhead per task.
#[crate::remote]
pub fn noop() {}

/// A buffer of `len` bytes, each `fill`.
#[crate::remote]
pub fn make_bytes(len: u64, fill: u8) -> Blob {
    Blob::from(vec![fill; len as usize])
}

/// The length of a buffer and the sum of its bytes (so every byte is read).
#[crate::remote]
pub fn byte_sum(data: Blob) -> (u64, u64) {
    // Summed in runs short enough for a u32 (which vectorizes well) to hold.
    let sum = data
        .chunks(1 << 16)
        .map(|run| u64::from(run.iter().map(|b| u32::from(*b)).sum::<u32>()))
        .sum();
    (data.len() as u64, sum)
}

/// Samples `samples` random points in the unit square; returns 4 × the fraction inside the
/// quarter circle: a Monte Carlo estimate of π.
#[crate::remote]
pub fn estimate_pi(samples: u64) -> f64 {
    let mut rng = SmallRng::from_os_rng();
    let mut inside = 0u64;
    for _ in 0..samples {
        let x: f64 = rng.random();
        let y: f64 = rng.random();
        if x * x + y * y <= 1.0 {
            inside += 1;
        }
    }
    4.0 * inside as f64 / samples as f64
}

/// Squares a number: the seed article's first remote function.
#[crate::remote]
pub fn square(x: i64) -> i64 {
    x * x
}

/// Sleeps, then returns its argument: a task that holds a slot for a while.
#[crate::remote]
pub fn sleep_then(millis: u64, value: u64) -> u64 {
    std::thread::sleep(std::time::Duration::from_millis(millis));
    value
}

/// Works in 1 ms steps for up to `millis`, returning early (with `true`) once cancelled: a long
/// task that stops when asked.
#[crate::remote]
pub fn work_until_cancelled(millis: u64) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(millis);
    while std::time::Instant::now() < deadline {
        if crate::driver::host::cancelled() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    false
}

/// Fails with an error message.
#[crate::remote]
pub fn fail_with(message: String) -> Result<u64, String> {
    Err(message)
}

/// Panics with a message.
#[crate::remote]
pub fn panic_with(message: String) -> u64 {
    panic!("{message}")
}

/// Adds two numbers.
#[crate::remote]
pub fn add(a: i64, b: i64) -> i64 {
    a + b
}

/// Sums `0..n` by submitting one task per element from inside a task.
#[crate::remote]
pub async fn nested_sum(rt: &crate::Runtime, n: i64) -> crate::Result<i64> {
    let refs: Vec<_> = (0..n).map(|i| add.remote(rt, i, 0)).collect();
    Ok(rt.get_all(refs).await?.into_iter().sum())
}

/// Buffers of `len` bytes, one per `fills` byte, each put from inside the task and computed by
/// a child task: only references to them come back, held by the result.
#[crate::remote]
pub async fn make_buffers(
    rt: &crate::Runtime,
    len: u64,
    fills: Vec<u8>,
) -> crate::Result<Vec<crate::ObjectRef<Blob>>> {
    let mut refs = Vec::with_capacity(fills.len());
    for &fill in &fills {
        refs.push(rt.put(&Blob::from(vec![fill; len as usize])).await?);
        refs.push(make_bytes.remote(rt, len, fill));
    }
    Ok(refs)
}

/// A counter actor.
#[crate::actor]
pub struct Counter {
    value: i64,
}

#[crate::actor]
impl Counter {
    /// Starts at `start`.
    pub fn new(start: i64) -> Self {
        Counter { value: start }
    }
    /// Adds one and returns the new value.
    pub fn increment(&mut self) -> i64 {
        self.value += 1;
        self.value
    }
    /// The current value.
    pub fn value(&self) -> i64 {
        self.value
    }
    /// Adds `n` after sleeping `millis`.
    pub fn slow_add(&mut self, n: i64, millis: u64) -> i64 {
        std::thread::sleep(std::time::Duration::from_millis(millis));
        self.value += n;
        self.value
    }
}
