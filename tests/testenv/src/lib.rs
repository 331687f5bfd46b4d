//! A local Kubernetes for Flotilla's tests (see `docs/architecture.md`, "Testing without a Kubernetes cluster").
//!
//! - [`apiserver`]: a fake API server on 127.0.0.1 that speaks real Kubernetes HTTP, good enough
//!   for the real `kubectl` and for kube-rs clients such as the operator.
//! - [`kubelet`]: a process kubelet, an ordinary Kubernetes client that runs the pods it is given
//!   as local processes, each on its own 127.x.y.z address.

pub mod apiserver;
pub mod kubelet;
