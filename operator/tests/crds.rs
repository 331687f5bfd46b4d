//! The committed CRDs match the Rust types, and the schema they carry is structural, documented,
//! and enforces the static invariants through CEL rules that compile and stay within budget.
//!
//! Run with `FLOTILLA_REGEN=1` to rewrite `crds/` and `charts/flotilla/crds/`.

use std::path::{Path, PathBuf};

use flotilla_operator::{
    crd::{API_GROUP, API_VERSION},
    crdgen,
};
use kube::core::cel::{compile_schema, estimate_rule_cost, Validator};
use serde_json::{json, Value};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the operator crate lives in the workspace")
        .to_owned()
}

#[test]
fn committed_crds_are_fresh() {
    let root = workspace_root();
    let dirs = [root.join("crds"), root.join("charts/flotilla/crds")];
    if std::env::var_os("FLOTILLA_REGEN").is_some() {
        for dir in &dirs {
            crdgen::write_all(dir).expect("write CRDs");
        }
    }
    for dir in &dirs {
        for generated in crdgen::crds() {
            let path = dir.join(generated.file_name);
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            let fresh = crdgen::render(&generated.crd).expect("render");
            assert!(
                committed == fresh,
                "{} is stale: run `FLOTILLA_REGEN=1 cargo test -p flotilla-operator --test crds`",
                path.display()
            );
        }
    }
}

/// The openAPIV3Schema of a CRD, as JSON.
fn schema_of(kind: &str) -> Value {
    let generated = crdgen::crds()
        .into_iter()
        .find(|g| g.crd.spec.names.kind == kind)
        .expect("known kind");
    let version = &generated.crd.spec.versions[0];
    serde_json::to_value(
        version
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .expect("schema"),
    )
    .expect("schema serializes")
}

/// Calls `visit(path, node)` on every schema node under `node`.
fn walk(node: &Value, path: &str, visit: &mut dyn FnMut(&str, &Value)) {
    visit(path, node);
    if let Some(properties) = node.get("properties").and_then(Value::as_object) {
        for (name, child) in properties {
            walk(child, &format!("{path}.{name}"), visit);
        }
    }
    if let Some(items) = node.get("items") {
        walk(items, &format!("{path}[]"), visit);
    }
    if let Some(Value::Object(_)) = node.get("additionalProperties") {
        walk(&node["additionalProperties"], &format!("{path}{{}}"), visit);
    }
}

#[test]
fn schemas_are_structural_and_documented() {
    for kind in ["ComputeCluster", "ComputeJob"] {
        let schema = schema_of(kind);
        for part in ["spec", "status"] {
            walk(
                &schema["properties"][part],
                &format!("{kind}.{part}"),
                &mut |path, node| {
                    assert!(
                        node.get("x-kubernetes-preserve-unknown-fields").is_none(),
                        "{path} keeps unknown fields"
                    );
                    assert!(
                        node.get("type").is_some()
                            || node.get("x-kubernetes-int-or-string").is_some(),
                        "{path} has no type: {node}"
                    );
                    for keyword in ["$ref", "oneOf", "anyOf", "allOf"] {
                        // Structural schemas allow these only as pure validation; we never need them.
                        assert!(
                            node.get(keyword).is_none() || keyword == "anyOf",
                            "{path} uses {keyword}"
                        );
                    }
                    let own_field = !path.contains("podTemplate")
                        && !path.contains("resources.")
                        && !path.contains("conditions[].")
                        && !path.contains(".env[]");
                    // Items of lists and values of maps are described by their field.
                    let is_field = !path.ends_with("[]") && !path.ends_with('}');
                    if own_field && is_field && path.contains('.') {
                        assert!(
                            node.get("description")
                                .and_then(Value::as_str)
                                .is_some_and(|d| !d.is_empty()),
                            "{path} has no description"
                        );
                    }
                },
            );
        }
    }
}

#[test]
fn crds_have_names_columns_and_subresources() {
    for (generated, short, columns) in crdgen::crds()
        .iter()
        .zip([
            (
                "fcc",
                vec!["Desired", "Ready", "Phase", "Autoscaler", "Demand", "Age"],
            ),
            (
                "fjob",
                vec!["Phase", "Cluster", "Attempts", "Start", "Completion", "Age"],
            ),
        ])
        .map(|(g, (s, c))| (g, s, c))
    {
        let crd = &generated.crd;
        assert_eq!(crd.spec.group, API_GROUP);
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.short_names, Some(vec![short.to_owned()]));
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, API_VERSION);
        assert!(version.served && version.storage);
        assert!(version
            .subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some());
        let names: Vec<_> = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(names, columns);
    }
}

#[test]
fn the_cluster_scales_through_plain_field_paths() {
    let crd = &crdgen::crds()[0].crd;
    assert_eq!(crd.spec.names.kind, "ComputeCluster");
    let scale = crd.spec.versions[0]
        .subresources
        .as_ref()
        .and_then(|s| s.scale.as_ref())
        .expect("a scale subresource");
    assert_eq!(scale.spec_replicas_path, ".spec.replicas");
    assert_eq!(scale.status_replicas_path, ".status.replicas");
    assert_eq!(
        scale.label_selector_path.as_deref(),
        Some(".status.selector")
    );
    // The API server takes `.spec.`/`.status.` paths of plain field names, no list index; each
    // points at a field of the schema, replicas an integer, the selector a string.
    let schema = schema_of("ComputeCluster");
    for (path, type_) in [
        (scale.spec_replicas_path.as_str(), "integer"),
        (scale.status_replicas_path.as_str(), "integer"),
        (".status.selector", "string"),
    ] {
        let fields: Vec<&str> = path.trim_start_matches('.').split('.').collect();
        assert!(
            fields
                .iter()
                .all(|f| !f.is_empty() && f.chars().all(|c| c.is_ascii_alphanumeric())),
            "{path}"
        );
        let node = fields
            .iter()
            .fold(&schema, |node, field| &node["properties"][*field]);
        assert_eq!(node["type"], type_, "{path}");
    }
}

#[test]
fn cel_rules_compile_and_fit_the_cost_budget() {
    for kind in ["ComputeCluster", "ComputeJob"] {
        let schema = schema_of(kind);
        let compiled = compile_schema(&schema);
        assert!(
            !compiled.has_errors(),
            "{kind}: {:?}",
            compiled.compilation_errors()
        );
        let mut rules = 0;
        walk(&schema, kind, &mut |path, node| {
            for rule in node["x-kubernetes-validations"]
                .as_array()
                .into_iter()
                .flatten()
            {
                rules += 1;
                let rule = rule["rule"].as_str().expect("rule text");
                // Cost is estimated against the node the rule sits on, as the API server does.
                let warnings = estimate_rule_cost(rule, &compile_schema(node));
                assert!(warnings.is_empty(), "{path}: {rule}: {warnings:?}");
            }
        });
        assert!(rules > 0, "{kind} has CEL rules");
    }
}

fn cluster(spec: Value) -> Value {
    json!({
        "apiVersion": "flotilla.dev/v1alpha1",
        "kind": "ComputeCluster",
        "metadata": {"name": "demo", "namespace": "science"},
        "spec": spec,
    })
}

/// The CEL failure messages for `object`, empty when it passes.
fn cel_messages(kind: &str, object: &Value) -> Vec<String> {
    match Validator::new().validate(&schema_of(kind), object, None) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.iter().map(|e| e.to_string()).collect(),
    }
}

#[test]
fn cel_accepts_a_good_cluster() {
    let good = cluster(json!({
        "image": "flotilla:dev",
        "workerGroups": [
            {"name": "cpu", "replicas": 2, "minReplicas": 1, "maxReplicas": 8},
            {"name": "gpu"}
        ],
        "autoscaling": {"targetSlotUtilization": 0.8}
    }));
    assert_eq!(cel_messages("ComputeCluster", &good), Vec::<String>::new());
}

#[test]
fn cel_refuses_replicas_outside_min_and_max() {
    let below = cluster(json!({
        "image": "flotilla:dev",
        "workerGroups": [{"name": "cpu", "replicas": 1, "minReplicas": 2}]
    }));
    let messages = cel_messages("ComputeCluster", &below);
    assert!(
        messages
            .iter()
            .any(|m| m.contains("minReplicas must not be greater than replicas")),
        "{messages:?}"
    );
    let above = cluster(json!({
        "image": "flotilla:dev",
        "workerGroups": [{"name": "cpu", "replicas": 5, "maxReplicas": 4}]
    }));
    let messages = cel_messages("ComputeCluster", &above);
    assert!(
        messages
            .iter()
            .any(|m| m.contains("replicas must not be greater than maxReplicas")),
        "{messages:?}"
    );
}

#[test]
fn cel_refuses_duplicate_group_names() {
    let duplicate = cluster(json!({
        "image": "flotilla:dev",
        "workerGroups": [{"name": "cpu"}, {"name": "gpu"}, {"name": "cpu"}]
    }));
    let messages = cel_messages("ComputeCluster", &duplicate);
    assert!(
        messages
            .iter()
            .any(|m| m.contains("worker group names must be unique")),
        "{messages:?}"
    );
}

#[test]
fn cel_refuses_a_non_positive_target_utilization() {
    let zero = cluster(json!({
        "image": "flotilla:dev",
        "workerGroups": [{"name": "cpu"}],
        "autoscaling": {"targetSlotUtilization": 0.0}
    }));
    let messages = cel_messages("ComputeCluster", &zero);
    assert!(
        messages
            .iter()
            .any(|m| m.contains("targetSlotUtilization must be greater than 0")),
        "{messages:?}"
    );
}

#[test]
fn cel_wants_exactly_one_of_cluster_ref_and_cluster() {
    let job = |spec: Value| {
        json!({
            "apiVersion": "flotilla.dev/v1alpha1",
            "kind": "ComputeJob",
            "metadata": {"name": "pi", "namespace": "science"},
            "spec": spec,
        })
    };
    let inline = json!({"image": "flotilla:dev", "workerGroups": [{"name": "cpu"}]});
    let exactly_one = "exactly one of clusterRef and cluster must be set";
    assert_eq!(
        cel_messages("ComputeJob", &job(json!({"clusterRef": {"name": "demo"}}))),
        Vec::<String>::new()
    );
    assert_eq!(
        cel_messages("ComputeJob", &job(json!({"cluster": inline}))),
        Vec::<String>::new()
    );
    for bad in [
        json!({}),
        json!({"clusterRef": {"name": "demo"}, "cluster": inline}),
    ] {
        let messages = cel_messages("ComputeJob", &job(bad));
        assert!(
            messages.iter().any(|m| m.contains(exactly_one)),
            "{messages:?}"
        );
    }
    // The embedded cluster spec carries the cluster's own rules.
    let bad_inline =
        json!({"cluster": {"image": "x", "workerGroups": [{"name": "a"}, {"name": "a"}]}});
    let messages = cel_messages("ComputeJob", &job(bad_inline));
    assert!(
        messages.iter().any(|m| m.contains("unique")),
        "{messages:?}"
    );
}
