//! One reconcile of a `ComputeCluster`, as a pipeline of steps that each do one thing:
//!
//! 1. [`observe`] reads what exists (Secret, Service, pods, the head's view of its workers);
//! 2. [`validate`] checks the spec and resolves its defaults (pure);
//! 3. [`desired`] builds the children the spec asks for, once (pure);
//! 4. [`plan`] diffs what exists against them and picks one safe step (pure);
//! 5. [`apply`] carries the step out and says what it applied, a refusal included, and starts
//!    the [`drain`]s of workers marked draining;
//! 6. [`status`] derives the status, and whether the cluster still moves, from what was observed
//!    and applied (pure).
//!
//! [`pods`] reads pods for the plan and the status. Only `observe`, `apply` and `drain` talk to
//! the API server or the head; the pure steps take values and are tested on YAML fixtures.

pub mod apply;
pub mod desired;
pub mod drain;
pub mod observe;
pub mod plan;
pub mod pods;
pub mod status;
pub mod validate;
