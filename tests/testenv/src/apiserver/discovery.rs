//! API discovery (`/api`, `/apis`, resource lists) and the OpenAPI v3 documents kubectl reads.
//!
//! Discovery is served in the legacy (unaggregated) shape with `Content-Type: application/json`;
//! clients that ask for aggregated discovery first (kubectl does) fall back to it.

use serde_json::{json, Map, Value};

use super::resources::{Registry, Resource};

/// The Kubernetes version the server reports.
pub(crate) fn version() -> Value {
    json!({
        "major": "1",
        "minor": "32",
        "gitVersion": "v1.32.0",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2024-12-11T00:00:00Z",
        "goVersion": "go1.23.4",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

/// `/api`.
pub(crate) fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

/// The `APIGroup` of a named group.
fn api_group(registry: &Registry, group: &str) -> Option<Value> {
    let versions: Vec<Value> = registry
        .group_versions()
        .keys()
        .filter(|(g, _)| g == group)
        .map(|(g, v)| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
        .collect();
    let preferred = versions.first()?.clone();
    Some(json!({"name": group, "versions": versions, "preferredVersion": preferred}))
}

/// `/apis`.
pub(crate) fn groups(registry: &Registry) -> Value {
    let mut names: Vec<String> = registry
        .all()
        .map(|r| r.group.clone())
        .filter(|g| !g.is_empty())
        .collect();
    names.dedup();
    names.sort();
    names.dedup();
    let groups: Vec<Value> = names
        .iter()
        .filter_map(|g| api_group(registry, g))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/{group}`.
pub(crate) fn group(registry: &Registry, group: &str) -> Option<Value> {
    let mut group = api_group(registry, group)?;
    group["kind"] = json!("APIGroup");
    group["apiVersion"] = json!("v1");
    Some(group)
}

/// `/api/v1` and `/apis/{group}/{version}`.
pub(crate) fn resource_list(registry: &Registry, group: &str, version: &str) -> Option<Value> {
    let group_versions = registry.group_versions();
    let resources = group_versions.get(&(group.to_owned(), version.to_owned()))?;
    let mut list = Vec::new();
    for r in resources {
        let mut entry = json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": r.verbs(),
        });
        if !r.short_names.is_empty() {
            entry["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            entry["categories"] = json!(r.categories);
        }
        list.push(entry);
        if r.status {
            list.push(json!({"name": format!("{}/status", r.plural), "singularName": "", "namespaced": r.namespaced, "kind": r.kind, "verbs": ["get", "patch", "update"]}));
        }
        if r.scale.is_some() {
            list.push(json!({"name": format!("{}/scale", r.plural), "singularName": "", "namespaced": r.namespaced, "group": "autoscaling", "version": "v1", "kind": "Scale", "verbs": ["get", "patch", "update"]}));
        }
        if r.binding {
            list.push(json!({"name": format!("{}/binding", r.plural), "singularName": "", "namespaced": r.namespaced, "kind": "Binding", "verbs": ["create"]}));
        }
    }
    let group_version = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": list}),
    )
}

/// The OpenAPI v3 path of a group/version: `api/v1` or `apis/flotilla.dev/v1alpha1`.
fn openapi_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// `/openapi/v3`: where each group/version's document is.
pub(crate) fn openapi_v3_root(registry: &Registry) -> Value {
    let mut paths = Map::new();
    for (group, version) in registry.group_versions().keys() {
        let path = openapi_path(group, version);
        let url = format!("/openapi/v3/{path}?hash={:016X}", registry.generation);
        paths.insert(path, json!({"serverRelativeURL": url}));
    }
    json!({"paths": paths})
}

/// The name of a kind's schema in `components.schemas`, e.g. `dev.flotilla.v1alpha1.ComputeCluster`.
fn schema_name(r: &Resource) -> String {
    let reversed: Vec<&str> = if r.group.is_empty() {
        vec!["io", "k8s", "api", "core"]
    } else {
        r.group.split('.').rev().collect()
    };
    format!("{}.{}.{}", reversed.join("."), r.version, r.kind)
}

/// `/openapi/v3/{api/v1 | apis/group/version}`: one item path per resource whose PATCH takes the
/// `fieldValidation` parameter (kubectl checks this before relying on server-side field
/// validation), and the schemas of custom resources.
pub(crate) fn openapi_v3(registry: &Registry, group: &str, version: &str) -> Option<Value> {
    let group_versions = registry.group_versions();
    let resources = group_versions.get(&(group.to_owned(), version.to_owned()))?;
    let mut paths = Map::new();
    let mut schemas = Map::new();
    let query = |name: &str| json!({"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": true}});
    for r in resources {
        let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
        let prefix = format!("/{}", openapi_path(group, version));
        let item = if r.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
        } else {
            format!("{prefix}/{}/{{name}}", r.plural)
        };
        let reference = json!({"$ref": format!("#/components/schemas/{}", schema_name(r))});
        let responses = json!({"200": {"description": "OK", "content": {"application/json": {"schema": reference}}}});
        let operation = |verb: &str, params: Vec<Value>| {
            json!({
                "operationId": format!("{verb}{}", r.kind),
                "parameters": params,
                "responses": responses,
                "x-kubernetes-action": verb,
                "x-kubernetes-group-version-kind": gvk,
            })
        };
        paths.insert(
            item,
            json!({
                "get": operation("get", vec![]),
                "put": operation("put", vec![query("dryRun"), query("fieldManager"), query("fieldValidation")]),
                "patch": operation("patch", vec![query("dryRun"), query("fieldManager"), query("fieldValidation"), query("force")]),
                "delete": operation("delete", vec![query("dryRun"), query("gracePeriodSeconds"), query("propagationPolicy")]),
                "parameters": [
                    {"name": "name", "in": "path", "required": true, "schema": {"type": "string"}},
                ],
            }),
        );
        let mut schema = match &r.schema {
            Some(schema) => (**schema).clone(),
            None => json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
        };
        if let Some(properties) = schema.get_mut("properties").and_then(Value::as_object_mut) {
            properties
                .entry("apiVersion")
                .or_insert(json!({"type": "string"}));
            properties
                .entry("kind")
                .or_insert(json!({"type": "string"}));
            properties
                .entry("metadata")
                .or_insert(json!({"type": "object"}));
        }
        schema["x-kubernetes-group-version-kind"] = json!([gvk]);
        schemas.insert(schema_name(r), schema);
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}
