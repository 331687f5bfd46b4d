//! The names a cluster's children get, the DNS name workers reach the head by, and the label sets
//! that select them; shared by validation (name length limits) and the builders.

use std::collections::BTreeMap;

use rand::Rng;

use crate::contract::{
    Role, APP_NAME, HEAD_GRPC_PORT, LABEL_APP_INSTANCE, LABEL_APP_NAME, LABEL_CLUSTER, LABEL_GROUP,
    LABEL_MANAGED_BY, LABEL_ROLE, MANAGER_NAME,
};

/// Longest cluster name: the head Service `<cluster>-head` must be a 63-character DNS label.
pub const MAX_CLUSTER_NAME_LEN: usize = 63 - "-head".len();
/// Longest worker pod name, so that a pod's hostname (cut at 63) equals its name.
pub const MAX_POD_NAME_LEN: usize = 63;
/// Length of the random suffix of worker pod names.
pub const WORKER_SUFFIX_LEN: usize = 5;

/// Name of the cluster's token Secret.
pub fn token_secret_name(cluster: &str) -> String {
    format!("{cluster}-token")
}

/// Name of the head pod.
pub fn head_pod_name(cluster: &str) -> String {
    format!("{cluster}-head")
}

/// Name of the head Service.
pub fn head_service_name(cluster: &str) -> String {
    format!("{cluster}-head")
}

/// Name of a worker pod: `<cluster>-<group>-<suffix>`.
pub fn worker_pod_name(cluster: &str, group: &str, suffix: &str) -> String {
    format!("{cluster}-{group}-{suffix}")
}

/// A random worker name suffix of [`WORKER_SUFFIX_LEN`] characters, as Kubernetes makes them (no
/// vowels, so no words; no look-alike digits).
pub fn random_worker_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..WORKER_SUFFIX_LEN)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// The head's gRPC address as workers reach it: the Service's DNS name and port.
pub fn head_address(cluster: &str, namespace: &str) -> String {
    format!(
        "{}.{namespace}.svc:{HEAD_GRPC_PORT}",
        head_service_name(cluster)
    )
}

/// Label selector (`key=value`) of every pod of a cluster.
pub fn cluster_selector(cluster: &str) -> String {
    format!("{LABEL_CLUSTER}={cluster}")
}

/// Labels on every child of a cluster; also the selector of all of them.
pub fn cluster_labels(cluster: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_APP_NAME.to_owned(), APP_NAME.to_owned()),
        (LABEL_APP_INSTANCE.to_owned(), cluster.to_owned()),
        (LABEL_MANAGED_BY.to_owned(), MANAGER_NAME.to_owned()),
        (LABEL_CLUSTER.to_owned(), cluster.to_owned()),
    ])
}

/// Labels selecting the head pod.
pub fn head_selector(cluster: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_APP_NAME.to_owned(), APP_NAME.to_owned()),
        (LABEL_CLUSTER.to_owned(), cluster.to_owned()),
        (LABEL_ROLE.to_owned(), Role::Head.as_str().to_owned()),
    ])
}

/// Labels selecting the worker pods of one group.
pub fn worker_selector(cluster: &str, group: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_APP_NAME.to_owned(), APP_NAME.to_owned()),
        (LABEL_CLUSTER.to_owned(), cluster.to_owned()),
        (LABEL_ROLE.to_owned(), Role::Worker.as_str().to_owned()),
        (LABEL_GROUP.to_owned(), group.to_owned()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_are_named_after_the_cluster() {
        assert_eq!(token_secret_name("demo"), "demo-token");
        assert_eq!(head_pod_name("demo"), "demo-head");
        assert_eq!(head_service_name("demo"), "demo-head");
        assert_eq!(worker_pod_name("demo", "cpu", "x7k2q"), "demo-cpu-x7k2q");
        assert_eq!(
            head_address("demo", "science"),
            "demo-head.science.svc:7400"
        );
        assert_eq!(cluster_selector("demo"), "flotilla.dev/cluster=demo");
    }

    #[test]
    fn random_suffixes_are_dns_safe() {
        let suffix = random_worker_suffix();
        assert_eq!(suffix.len(), WORKER_SUFFIX_LEN);
        assert!(suffix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
    }
}
