//! The Flotilla Kubernetes operator: the `ComputeCluster` and `ComputeJob` resources, the checks
//! on their specs, and the children (Secret, Service, pods) a cluster is made of (see `docs/architecture.md`).
//!
//! The reconcile pipeline ([`controller`]) reads what exists, [`validation::validate`]s the spec
//! (pure), [`plan`]s one step from the desired children [`builders`] make (pure), carries it out,
//! and derives the [`status`] (pure). [`head`] asks a cluster's head which workers are idle and
//! drains them; [`leader`] elects one acting replica; [`metrics`] serves the operator's own.

use std::path::PathBuf;

pub mod builders;
pub mod contract;
pub mod controller;
pub mod crd;
pub mod crdgen;
pub mod head;
pub mod leader;
pub mod metrics;
pub mod plan;
pub mod status;
pub mod validation;

/// Everything that can go wrong in the operator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A ComputeCluster spec the operator cannot honour.
    #[error("invalid spec: {0}")]
    InvalidSpec(#[from] validation::InvalidSpec),
    /// A Kubernetes API call failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The cluster's token Secret exists but holds no token.
    #[error("Secret {name} has no `token` entry; delete it and the operator makes a new one")]
    BadSecret {
        /// Name of the Secret.
        name: String,
    },
    /// The cluster's Secret belongs to an earlier cluster of the same name.
    #[error("Secret {name} belongs to an earlier cluster of the same name; waiting for it to be deleted")]
    ForeignSecret {
        /// Name of the Secret.
        name: String,
    },
    /// An object the operator must create already exists and is not the operator's.
    #[error(
        "{kind} {name} already exists and does not belong to a ComputeCluster; delete or rename it"
    )]
    NameTaken {
        /// Kind of the object.
        kind: &'static str,
        /// Its name.
        name: String,
    },
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
            Self::Kube(kube::Error::Api(status)) if status.code == 409 => "conflict",
            Self::Kube(kube::Error::Api(_)) => "kube_api",
            Self::Kube(_) => "kube_client",
            Self::BadSecret { .. } => "bad_secret",
            Self::ForeignSecret { .. } => "foreign_secret",
            Self::NameTaken { .. } => "name_taken",
            Self::RenderCrd { .. } => "render_crd",
            Self::WriteFile { .. } => "write_file",
        }
    }
}
