//! The example manifests under `examples/` parse into the Rust types, pass the CRD's CEL rules,
//! validate, and build pods.

use std::path::{Path, PathBuf};

use flotilla_operator::{
    cluster::{
        desired::Desired,
        validate::{validate, ValidatedCluster},
    },
    crd::ComputeCluster,
    crdgen,
};
use kube::core::cel::Validator;

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
}

/// Reads an example as the API server would store it: namespace defaulted, uid assigned.
fn load(name: &str) -> (serde_json::Value, ComputeCluster) {
    let path = example(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let raw: serde_json::Value = serde_yaml::from_str(&text).expect("example is YAML");
    let mut cluster: ComputeCluster = serde_yaml::from_str(&text)
        .unwrap_or_else(|e| panic!("{name} does not match the CRD types: {e}"));
    cluster
        .metadata
        .namespace
        .get_or_insert_with(|| "default".to_owned());
    cluster.metadata.uid = Some("00000000-0000-4000-8000-000000000000".to_owned());
    (raw, cluster)
}

fn check(name: &str) -> ValidatedCluster {
    let (raw, cluster) = load(name);
    let crd = crdgen::crds().remove(0).crd;
    let schema = serde_json::to_value(
        crd.spec.versions[0]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .expect("schema"),
    )
    .expect("schema serializes");
    if let Err(errors) = Validator::new().validate(&schema, &raw, None) {
        panic!("{name} breaks CEL rules: {errors:?}");
    }
    let validated = validate(&cluster).unwrap_or_else(|e| panic!("{name} is invalid: {e}"));
    let desired = Desired::of(&validated);
    for template in &desired.workers {
        template.pod("abcde");
    }
    validated
}

#[test]
fn minimal_cluster_example_is_valid() {
    let cluster = check("minimal-cluster.yaml");
    assert_eq!(cluster.groups.len(), 1);
    assert!(cluster.autoscaling.is_none());
}

#[test]
fn full_cluster_example_is_valid_and_uses_every_section() {
    let cluster = check("full-cluster.yaml");
    assert!(cluster.groups.len() >= 2);
    assert!(cluster.autoscaling.is_some());
    assert!(cluster.head.resources.is_some());
    assert!(cluster
        .groups
        .iter()
        .any(|g| g.template != Default::default()));
}

#[test]
fn autoscaling_cluster_example_is_valid_and_autoscales_every_group() {
    let cluster = check("autoscaling-cluster.yaml");
    let autoscaling = cluster.autoscaling.expect("autoscaling");
    assert!(autoscaling.enabled);
    assert!(cluster.groups.iter().any(|g| g.min_replicas == 0));
    assert!(cluster
        .groups
        .iter()
        .all(|g| g.max_replicas > g.min_replicas));
}
