//! The process kubelet.
