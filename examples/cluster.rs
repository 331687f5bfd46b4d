//! Code on workers: this program's own functions and actors run on a cluster whose workers run
//! this very program.
//!
//! ```sh
//! cargo build --example cluster
//! flotilla up --workers 2 --port 0 --worker-bin target/debug/examples/cluster   # prints the exports
//! export FLOTILLA_HEAD=… FLOTILLA_TOKEN=…
//! target/debug/examples/cluster
//! flotilla down
//! ```
//!
//! Without `FLOTILLA_HEAD` it starts a local cluster in its own process instead.

use std::collections::BTreeMap;

/// Counts the words of a line; runs on whichever worker has a free slot.
#[flotilla::remote]
fn count_words(line: String) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for word in line
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        *counts.entry(word.to_lowercase()).or_insert(0) += 1;
    }
    counts
}

/// Which process ran the task: the worker's program name and pid.
#[flotilla::remote]
fn whoami() -> (String, u32) {
    let program = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    (program, std::process::id())
}

/// Merges word counts as they arrive; its state lives on one worker.
#[flotilla::actor]
struct Tally {
    counts: BTreeMap<String, u64>,
}

#[flotilla::actor]
impl Tally {
    fn new() -> Self {
        Tally {
            counts: BTreeMap::new(),
        }
    }

    fn add(&mut self, counts: BTreeMap<String, u64>) -> usize {
        for (word, n) in counts {
            *self.counts.entry(word).or_insert(0) += n;
        }
        self.counts.len()
    }

    fn top(&self, n: usize) -> Vec<(String, u64)> {
        let mut all: Vec<_> = self.counts.iter().map(|(w, c)| (w.clone(), *c)).collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        all.truncate(n);
        all
    }
}

const TEXT: &str = "Ray and Dask made parallel Python easy
mark a function remote and call it a thousand times
keep state in actors and let a scheduler spread the work
Flotilla does this for Rust and runs it on Kubernetes";

#[flotilla::main]
async fn main(rt: flotilla::Runtime) -> flotilla::Result<()> {
    let here = std::process::id();
    let who: Vec<_> = (0..4).map(|_| whoami.remote(&rt)).collect();
    let mut workers: Vec<(String, u32)> = rt.get_all(&who).await?;
    workers.sort();
    workers.dedup();
    for (program, pid) in &workers {
        let place = if *pid == here {
            "this process (local cluster)"
        } else {
            "a worker process"
        };
        println!("ran on {program} pid {pid}: {place}");
    }

    let tally = Tally::remote(&rt).await?;
    let counted: Vec<_> = TEXT
        .lines()
        .map(|line| count_words.remote(&rt, line.to_string()))
        .collect();
    for counts in counted {
        // Each count is passed on by reference: the actor's worker fetches the value itself.
        tally.add(counts).await?;
    }
    for (word, n) in tally.top(3).await? {
        println!("{word}: {n}");
    }
    Ok(())
}
