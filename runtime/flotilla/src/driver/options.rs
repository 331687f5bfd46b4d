//! Per-call options: [`TaskOptions`] for remote functions, [`ActorOptions`] for actor creation.

use std::collections::HashMap;

use flotilla_proto::v1 as pb;

/// Per-call options of a remote function (`f.remote_with(&rt, &TaskOptions::default().max_retries(5), …)`).
///
/// Unset values are resolved by the head, once, when the task is submitted.
#[derive(Debug, Clone, Default)]
pub struct TaskOptions {
    max_retries: Option<u32>,
    slots: u32,
    custom: HashMap<String, u64>,
    name: String,
}

impl TaskOptions {
    /// Retries after worker failures (default 3).
    pub fn max_retries(mut self, n: u32) -> Self {
        self.max_retries = Some(n);
        self
    }
    /// Task slots the call takes (default 1).
    pub fn slots(mut self, n: u32) -> Self {
        self.slots = n;
        self
    }
    /// A named custom resource the call needs (e.g. `("gpu", 1)`).
    pub fn resource(mut self, name: &str, amount: u64) -> Self {
        self.custom.insert(name.to_string(), amount);
        self
    }
    /// A name for logs and metrics.
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }

    /// The wire form: unset retries are -1 and unset slots 0, for the head to resolve.
    pub(crate) fn to_proto(&self) -> pb::TaskOptions {
        pb::TaskOptions {
            max_retries: self.max_retries.map_or(-1, |n| n as i32),
            resources: Some(pb::Resources {
                slots: self.slots,
                custom: self.custom.clone(),
            }),
            name: self.name.clone(),
        }
    }
}

/// Options of an actor's creation (`Counter::options().name("c").max_restarts(2)`).
#[derive(Debug, Clone, Default)]
pub struct ActorOptions {
    name: String,
    max_restarts: i32,
    detached: bool,
}

impl ActorOptions {
    /// A name other drivers can look the actor up by. Named actors outlive their creator's
    /// handles until the creating session ends, unless also `detached`.
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }
    /// Restarts after its worker dies (default 0; -1 for unlimited).
    pub fn max_restarts(mut self, n: i32) -> Self {
        self.max_restarts = n;
        self
    }
    /// Keep the actor alive after its creator's session ends.
    pub fn detached(mut self, detached: bool) -> Self {
        self.detached = detached;
        self
    }
}

impl ActorOptions {
    /// The wire form of a creation of `class` with these options.
    pub(crate) fn to_proto(&self, class: &str) -> pb::ActorCreate {
        pb::ActorCreate {
            class: class.to_string(),
            max_restarts: self.max_restarts,
            name: self.name.clone(),
            detached: self.detached,
        }
    }
}
