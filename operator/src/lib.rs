//! The Flotilla Kubernetes operator: the `ComputeCluster` and `ComputeJob` resources, the checks
//! on their specs, and the children (Secret, Service, pods) a cluster is made of (DESIGN.md §4).
//!
//! The reconcile pipeline reads what exists, [`validation::validate`]s the spec (pure), builds
//! the desired children with [`builders`] (pure), applies them, and derives the status.

use std::path::PathBuf;

pub mod builders;
pub mod contract;
pub mod crd;
pub mod crdgen;
pub mod validation;

/// Everything that can go wrong in the operator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A ComputeCluster spec the operator cannot honour.
    #[error("invalid spec: {0}")]
    InvalidSpec(#[from] validation::InvalidSpec),
    /// A CRD could not be rendered as YAML.
    #[error("cannot render CRD {name} as YAML")]
    RenderCrd {
        /// Name of the CRD.
        name: String,
        /// The serializer's error.
        #[source]
        source: serde_yaml::Error,
    },
    /// A file could not be written.
    #[error("cannot write {}", path.display())]
    WriteFile {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// A short label for metrics and Events.
    pub fn label(&self) -> &'static str {
        match self {
            Self::InvalidSpec(_) => "invalid_spec",
            Self::RenderCrd { .. } => "render_crd",
            Self::WriteFile { .. } => "write_file",
        }
    }
}
