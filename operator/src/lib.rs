//! The Flotilla Kubernetes operator: the `ComputeCluster` and `ComputeJob` resources, the checks
//! on their specs, and the children (Secret, Service, pods) a cluster is made of (see `docs/architecture.md`).
//!
//! [`controller`] runs the watches and, for each ComputeCluster, the [`cluster`] pipeline:
//! observe → validate → desired → plan → apply → status. [`job`] runs each ComputeJob's driver
//! to completion as a state machine over its observed pods and cluster. [`head`] asks a cluster's head which
//! workers are idle and drains them; [`leader`] elects one acting replica; [`metrics`] serves the
//! operator's own; [`context`] is what every reconcile shares.
//!
//! Import rules (no cycles; check with `grep -rn "use crate::\|use super::" src`):
//! - [`contract`], [`crd`] and [`names`] import nothing else of the crate but each other
//!   (`names` uses `contract`);
//! - `cluster/{validate,desired,plan,pods,status}.rs` are pure: no `kube::Api` or `Client`;
//!   only `cluster/{observe,apply,drain}.rs` talk to the API server or the head;
//! - within `cluster/`, a step imports only the steps before it (and [`cluster::pods`]);
//! - outside `cluster/`, only [`controller`], [`autoscale::steer`] and [`job`] import it
//!   ([`Error`] names the validation's [`cluster::validate::InvalidSpec`]; [`job`] shares its pod
//!   helpers: [`cluster::pods`], the security contexts and env builders of [`cluster::desired`]);
//! - [`autoscale::policy`] is pure; [`autoscale`]'s loops talk to Prometheus or a head's
//!   `/metrics` and record Events, never write the API otherwise;
//! - [`job::machine`] and [`job::driver`] are pure; only `job/mod.rs` talks to the API server
//!   and the head.

use std::path::PathBuf;

use kube::core::Status;

pub mod autoscale;
pub mod cluster;
pub mod context;
pub mod contract;
pub mod controller;
pub mod crd;
pub mod crdgen;
pub mod head;
pub mod job;
pub mod leader;
pub mod metrics;
pub mod names;

/// Everything that can go wrong in the operator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A ComputeCluster spec the operator cannot honour.
    #[error("invalid spec: {0}")]
    InvalidSpec(#[from] cluster::validate::InvalidSpec),
    /// A stored object this operator cannot read (a field of another type, or one it does not
    /// know, as after a CRD upgrade or rollback); the others are reconciled all the same.
    #[error("cannot read {kind} {name}: {source}")]
    InvalidObject {
        /// Kind of the object.
        kind: &'static str,
        /// `namespace/name` of the object.
        name: String,
        /// Why it cannot be read.
        #[source]
        source: Box<kube::core::error_boundary::InvalidObject>,
    },
    /// The API server refused a write of the reconcile's step, or a name is taken.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// A Kubernetes API call failed; shown in the API server's words when it answered.
    #[error("{}", kube_words(.0))]
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
            Self::InvalidObject { .. } => "invalid_object",
            Self::Kube(kube::Error::Api(status)) if status.code == 409 => "conflict",
            Self::Kube(kube::Error::Api(_)) => "kube_api",
            Self::Kube(_) => "kube_client",
            Self::BadSecret { .. } => "bad_secret",
            Self::ForeignSecret { .. } => "foreign_secret",
            Self::Refused(Refusal::Rejected { status, .. }) if status.code == 409 => "conflict",
            Self::Refused(Refusal::Rejected { .. }) => "kube_api",
            Self::Refused(Refusal::NameTaken { .. }) => "name_taken",
            Self::RenderCrd { .. } => "render_crd",
            Self::WriteFile { .. } => "write_file",
        }
    }
}

/// A write of a reconcile's step that did not happen, and cannot until something changes: a
/// quota, an admission policy, a name someone else holds. The status shows it.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The API server refused the write.
    #[error("{}", describe(status))]
    Rejected {
        /// Kind of the object written.
        kind: &'static str,
        /// Its name.
        name: String,
        /// The API server's answer.
        status: Box<Status>,
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
}

/// A failed Kubernetes call as a person reads it: the API server's own words when it answered
/// (kube's display of an API error appends a Debug dump of the whole `Status`), else the
/// client's.
fn kube_words(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => describe(status),
        other => format!("cannot reach the Kubernetes API: {other}"),
    }
}

/// The API server's own words, which name the object and the rule it broke.
fn describe(status: &Status) -> String {
    if status.message.is_empty() {
        format!(
            "the API server refused: {} ({})",
            status.reason, status.code
        )
    } else {
        status.message.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(code: u16) -> Error {
        Refusal::Rejected {
            kind: "Pod",
            name: "demo-head".into(),
            status: Box::new(
                Status::failure("pods \"demo-head\" is forbidden", "Forbidden").with_code(code),
            ),
        }
        .into()
    }

    #[test]
    fn refusals_keep_their_labels_and_the_api_servers_words() {
        assert_eq!(rejected(409).label(), "conflict");
        assert_eq!(rejected(403).label(), "kube_api");
        assert_eq!(rejected(403).to_string(), "pods \"demo-head\" is forbidden");
        let taken = Error::from(Refusal::NameTaken {
            kind: "Pod",
            name: "demo-head".into(),
        });
        assert_eq!(taken.label(), "name_taken");
        assert_eq!(
            taken.to_string(),
            "Pod demo-head already exists and does not belong to a ComputeCluster; delete or rename it"
        );
    }

    #[test]
    fn a_failed_call_says_what_the_api_server_said_without_a_debug_dump() {
        let status = Status::failure(
            "pods is forbidden: User \"system:serviceaccount:flotilla:operator\" cannot list \
             resource \"pods\" in the namespace \"team\"",
            "Forbidden",
        )
        .with_code(403);
        let error = Error::from(kube::Error::Api(Box::new(status.clone())));
        assert_eq!(error.to_string(), status.message);
        assert_eq!(error.label(), "kube_api");
        let silent = Error::from(kube::Error::Api(Box::new(
            Status::failure("", "ServiceUnavailable").with_code(503),
        )));
        assert_eq!(
            silent.to_string(),
            "the API server refused: ServiceUnavailable (503)"
        );
        for text in [error.to_string(), silent.to_string()] {
            assert!(!text.contains("Status {"), "{text}");
            assert!(!text.contains("ApiError"), "{text}");
        }
    }
}
