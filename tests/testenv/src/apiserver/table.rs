//! `meta.k8s.io/v1 Table` output, which `kubectl get` asks for.

use k8s_openapi::jiff::Timestamp;
use serde_json::{json, Value};

use super::resources::{PrinterColumn, Resource};

/// What each row carries besides its cells (`includeObject`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum IncludeObject {
    None,
    #[default]
    Metadata,
    Object,
}

impl IncludeObject {
    pub fn parse(text: Option<&str>) -> Self {
        match text {
            Some("None") => Self::None,
            Some("Object") => Self::Object,
            _ => Self::Metadata,
        }
    }
}

fn column(
    name: &str,
    type_: &str,
    format: &str,
    description: &str,
    json_path: &str,
    priority: i64,
) -> PrinterColumn {
    PrinterColumn {
        name: name.to_owned(),
        type_: type_.to_owned(),
        format: format.to_owned(),
        description: description.to_owned(),
        json_path: json_path.to_owned(),
        priority,
    }
}

/// The columns after Name.
fn columns(resource: &Resource) -> Vec<PrinterColumn> {
    if resource.custom && !resource.printer_columns.is_empty() {
        return resource.printer_columns.clone();
    }
    let age = column("Age", "date", "", "CreationTimestamp is a timestamp representing the server time when this object was created.", ".metadata.creationTimestamp", 0);
    let mut columns = match (resource.group.as_str(), resource.plural.as_str()) {
        ("", "pods") => vec![
            column(
                "Ready",
                "string",
                "",
                "The aggregate readiness state of this pod for accepting traffic.",
                "",
                0,
            ),
            column(
                "Status",
                "string",
                "",
                "The aggregate status of the containers in this pod.",
                "",
                0,
            ),
            column(
                "Restarts",
                "string",
                "",
                "The number of times the containers in this pod have been restarted.",
                "",
                0,
            ),
        ],
        ("", "namespaces") => vec![column(
            "Status",
            "string",
            "",
            "The status of the namespace",
            ".status.phase",
            0,
        )],
        ("", "services") => vec![
            column(
                "Type",
                "string",
                "",
                "The type of service.",
                ".spec.type",
                0,
            ),
            column(
                "Cluster-IP",
                "string",
                "",
                "The cluster IP of the service.",
                ".spec.clusterIP",
                0,
            ),
            column("Ports", "string", "", "The ports of the service.", "", 0),
        ],
        ("coordination.k8s.io", "leases") => vec![column(
            "Holder",
            "string",
            "",
            "The holder of the lease.",
            ".spec.holderIdentity",
            0,
        )],
        _ => Vec::new(),
    };
    columns.push(age);
    if resource.group.is_empty() && resource.plural == "pods" {
        columns.push(column(
            "IP",
            "string",
            "",
            "IP address allocated to the pod.",
            ".status.podIP",
            1,
        ));
        columns.push(column(
            "Node",
            "string",
            "",
            "Name of the node the pod is bound to.",
            ".spec.nodeName",
            1,
        ));
    }
    columns
}

/// Evaluates a simple JSONPath (`.status.phase`, `.spec.groups[0].name`, `.spec.groups[*].replicas`).
fn json_path<'a>(object: &'a Value, path: &str) -> Vec<&'a Value> {
    let mut current = vec![object];
    let path = path
        .trim()
        .trim_start_matches('{')
        .trim_end_matches('}')
        .trim_start_matches('.');
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (name, index) = match part.split_once('[') {
            Some((name, rest)) => (name, Some(rest.trim_end_matches(']'))),
            None => (part, None),
        };
        let mut next = Vec::new();
        for value in current {
            let Some(child) = (if name.is_empty() {
                Some(value)
            } else {
                value.get(name)
            }) else {
                continue;
            };
            match index {
                None => next.push(child),
                Some("*") => next.extend(child.as_array().into_iter().flatten()),
                Some(i) => next.extend(i.parse::<usize>().ok().and_then(|i| child.get(i))),
            }
        }
        current = next;
    }
    current
}

/// Go's `duration.HumanDuration` of the time since an RFC 3339 timestamp.
fn age(timestamp: &str) -> Value {
    let Ok(then) = timestamp.parse::<Timestamp>() else {
        return json!("<invalid>");
    };
    let seconds = Timestamp::now().duration_since(then).as_secs();
    let text = if seconds < 0 {
        "0s".to_owned()
    } else if seconds < 120 {
        format!("{seconds}s")
    } else if seconds < 600 {
        let (m, s) = (seconds / 60, seconds % 60);
        if s == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{s}s")
        }
    } else if seconds < 3 * 3600 {
        format!("{}m", seconds / 60)
    } else if seconds < 8 * 3600 {
        let (h, m) = (seconds / 3600, seconds % 3600 / 60);
        if m == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{m}m")
        }
    } else if seconds < 48 * 3600 {
        format!("{}h", seconds / 3600)
    } else if seconds < 8 * 86400 {
        let (d, h) = (seconds / 86400, seconds % 86400 / 3600);
        if h == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{h}h")
        }
    } else {
        format!("{}d", seconds / 86400)
    };
    json!(text)
}

fn cell(column: &PrinterColumn, object: &Value) -> Value {
    let values = json_path(object, &column.json_path);
    let Some(first) = values.first() else {
        return Value::Null;
    };
    match column.type_.as_str() {
        "date" => first.as_str().map(age).unwrap_or(Value::Null),
        "string" => {
            let texts: Vec<String> = values
                .iter()
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect();
            json!(texts.join(","))
        }
        _ => (*first).clone(),
    }
}

/// The cells of the columns computed from several fields.
fn computed_cell(resource: &Resource, column: &PrinterColumn, object: &Value) -> Option<Value> {
    if !column.json_path.is_empty() {
        return None;
    }
    let statuses: Vec<&Value> = object
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .collect();
    match (resource.plural.as_str(), column.name.as_str()) {
        ("pods", "Ready") => {
            let total = object
                .pointer("/spec/containers")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            let ready = statuses
                .iter()
                .filter(|s| s.get("ready").and_then(Value::as_bool) == Some(true))
                .count();
            Some(json!(format!("{ready}/{total}")))
        }
        ("pods", "Status") => {
            if object.pointer("/metadata/deletionTimestamp").is_some() {
                return Some(json!("Terminating"));
            }
            let waiting = statuses.iter().find_map(|s| {
                s.pointer("/state/waiting/reason")
                    .or_else(|| s.pointer("/state/terminated/reason"))
                    .and_then(Value::as_str)
            });
            let phase = object
                .pointer("/status/reason")
                .or_else(|| object.pointer("/status/phase"))
                .and_then(Value::as_str);
            Some(json!(waiting.or(phase).unwrap_or("Unknown")))
        }
        ("pods", "Restarts") => {
            let restarts: i64 = statuses
                .iter()
                .filter_map(|s| s.get("restartCount").and_then(Value::as_i64))
                .sum();
            Some(json!(restarts.to_string()))
        }
        ("services", "Ports") => {
            let ports: Vec<String> = object
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|p| {
                    let port = p.get("port").map(Value::to_string).unwrap_or_default();
                    let protocol = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
                    format!("{port}/{protocol}")
                })
                .collect();
            Some(json!(if ports.is_empty() {
                "<none>".to_owned()
            } else {
                ports.join(",")
            }))
        }
        _ => Some(Value::Null),
    }
}

/// A Table of `objects`, with `resource_version` in its list metadata.
pub(crate) fn table(
    resource: &Resource,
    objects: &[Value],
    resource_version: u64,
    include: IncludeObject,
) -> Value {
    let columns = columns(resource);
    let mut definitions = vec![json!({
        "name": "Name",
        "type": "string",
        "format": "name",
        "description": "Name must be unique within a namespace.",
        "priority": 0,
    })];
    definitions.extend(columns.iter().map(|c| {
        json!({"name": c.name, "type": c.type_, "format": c.format, "description": c.description, "priority": c.priority})
    }));
    let rows: Vec<Value> =
        objects
            .iter()
            .map(|object| {
                let mut cells = vec![object
                    .pointer("/metadata/name")
                    .cloned()
                    .unwrap_or(Value::Null)];
                cells.extend(columns.iter().map(|c| {
                    computed_cell(resource, c, object).unwrap_or_else(|| cell(c, object))
                }));
                let mut row = json!({"cells": cells});
                match include {
                    IncludeObject::None => {}
                    IncludeObject::Metadata => {
                        row["object"] = json!({
                            "kind": "PartialObjectMetadata",
                            "apiVersion": "meta.k8s.io/v1",
                            "metadata": object.get("metadata").cloned().unwrap_or(Value::Null),
                        });
                    }
                    IncludeObject::Object => row["object"] = object.clone(),
                }
                row
            })
            .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version.to_string()},
        "columnDefinitions": definitions,
        "rows": rows,
    })
}
