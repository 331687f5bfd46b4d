//! Events: one stored kind, the core `v1` Event, also served as `events.k8s.io/v1` Event with
//! Kubernetes' conversion (`pkg/apis/events/v1/conversion.go`), field label mapping and
//! validation (`pkg/apis/core/validation/events.go`).

use serde_json::{Map, Value};

use super::{error::FieldError, resources::Resource};

/// The fields the two versions name differently: `(events.k8s.io/v1, core v1)`. The others
/// (`reason`, `type`, `action`, `related`, `eventTime`, `series`, `reportingInstance`) are the
/// same in both.
const RENAMED: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
    ("reportingController", "reportingComponent"),
];

/// The `events.k8s.io/v1` field selector labels and the core labels they select by.
const FIELD_LABELS: &[(&str, &str)] = &[
    ("metadata.name", "metadata.name"),
    ("metadata.namespace", "metadata.namespace"),
    ("reason", "reason"),
    ("regarding.kind", "involvedObject.kind"),
    ("regarding.namespace", "involvedObject.namespace"),
    ("regarding.name", "involvedObject.name"),
    ("regarding.uid", "involvedObject.uid"),
    ("regarding.apiVersion", "involvedObject.apiVersion"),
    (
        "regarding.resourceVersion",
        "involvedObject.resourceVersion",
    ),
    ("regarding.fieldPath", "involvedObject.fieldPath"),
    ("reportingController", "reportingComponent"),
    ("source", "source"),
    ("type", "type"),
];

/// The field selector labels of core Events, besides `metadata.name` and `metadata.namespace`.
pub(crate) const CORE_FIELD_LABELS: &[&str] = &[
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
];

/// Whether a resource is `events.k8s.io` Events, stored as core Events.
pub(crate) fn is_events_v1(resource: &Resource) -> bool {
    resource.group == "events.k8s.io" && resource.plural == "events"
}

/// Whether a resource is Events of either version.
pub(crate) fn is_event(resource: &Resource) -> bool {
    resource.plural == "events" && (resource.group.is_empty() || is_events_v1(resource))
}

/// The core label an `events.k8s.io/v1` field selector label selects by.
pub(crate) fn core_field_label(label: &str) -> Option<&'static str> {
    FIELD_LABELS
        .iter()
        .find(|(events, _)| *events == label)
        .map(|(_, core)| *core)
}

/// Renames each `(from, to)` field from `from` to `to`, first dropping the fields already named
/// `to` (the version of `map` has no such field); returns the names of the dropped fields.
fn rename(
    map: &mut Map<String, Value>,
    pairs: impl Iterator<Item = (&'static str, &'static str)> + Clone,
) -> Vec<String> {
    let mut dropped = Vec::new();
    for (_, foreign) in pairs.clone() {
        if map.remove(foreign).is_some() {
            dropped.push(foreign.to_owned());
        }
    }
    for (from, to) in pairs {
        if let Some(value) = map.remove(from) {
            map.insert(to.to_owned(), value);
        }
    }
    dropped
}

/// An object sent to `resource` in its stored form: an `events.k8s.io/v1` Event becomes a core
/// Event. Returns the fields dropped because the version does not have them.
pub(crate) fn to_storage(resource: &Resource, mut object: Value) -> (Value, Vec<String>) {
    let Value::Object(map) = &mut object else {
        return (object, Vec::new());
    };
    let dropped = if is_events_v1(resource) {
        rename(map, RENAMED.iter().copied())
    } else if is_event(resource) {
        // A core Event: the names only events.k8s.io/v1 has are unknown here.
        RENAMED
            .iter()
            .filter(|(events, _)| map.remove(*events).is_some())
            .map(|(events, _)| (*events).to_owned())
            .collect()
    } else {
        Vec::new()
    };
    (object, dropped)
}

/// A stored object as `resource` serves it: a core Event as an `events.k8s.io/v1` Event.
pub(crate) fn from_storage(resource: &Resource, mut object: Value) -> Value {
    if is_events_v1(resource) {
        if let Value::Object(map) = &mut object {
            rename(map, RENAMED.iter().map(|(events, core)| (*core, *events)));
        }
    }
    object
}

fn text<'a>(object: &'a Value, pointer: &str) -> &'a str {
    object
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn is_set(object: &Value, pointer: &str) -> bool {
    match object.pointer(pointer) {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Number(n)) => n.as_f64() != Some(0.0),
        Some(_) => true,
    }
}

/// Whether `name` is a qualified name: an optional DNS subdomain prefix and `/`, then at most 63
/// alphanumerics, `-`, `_` or `.`, starting and ending alphanumeric.
fn is_qualified_name(name: &str) -> bool {
    let (prefix, name) = match name.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, name),
    };
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
            && p.starts_with(|c: char| c.is_ascii_alphanumeric())
            && p.ends_with(|c: char| c.is_ascii_alphanumeric())
    });
    prefix_ok
        && !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// The checks every Event passes, in its stored form.
fn legacy_errors(event: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let namespace = text(event, "/metadata/namespace");
    let involved = text(event, "/involvedObject/namespace");
    let mismatch = || {
        FieldError::invalid(
            "involvedObject.namespace",
            &Value::String(involved.to_owned()),
            "does not match event.namespace",
        )
    };
    if !is_set(event, "/eventTime") {
        let ok = if involved.is_empty() {
            namespace.is_empty() || namespace == "default"
        } else {
            namespace == involved
        };
        if !ok {
            errors.push(mismatch());
        }
        return errors;
    }
    if involved.is_empty() && namespace != "default" && namespace != "kube-system" {
        errors.push(mismatch());
    }
    let controller = text(event, "/reportingComponent");
    if controller.is_empty() {
        errors.push(FieldError::required("reportingController", ""));
    } else if !is_qualified_name(controller) {
        errors.push(FieldError::invalid(
            "reportingController",
            &Value::String(controller.to_owned()),
            "must be a qualified name: an optional DNS subdomain prefix and '/', then at most 63 alphanumeric characters, '-', '_' or '.', starting and ending with an alphanumeric character",
        ));
    }
    for (field, limit) in [("reportingInstance", 128), ("action", 128), ("reason", 128)] {
        let value = text(event, &format!("/{field}"));
        if value.is_empty() {
            errors.push(FieldError::required(field, ""));
        } else if value.chars().count() > limit {
            errors.push(FieldError::invalid(
                field,
                &Value::String(String::new()),
                format!("can have at most {limit} characters"),
            ));
        }
    }
    if text(event, "/message").chars().count() > 1024 {
        errors.push(FieldError::invalid(
            "message",
            &Value::String(String::new()),
            "can have at most 1024 characters",
        ));
    }
    errors
}

/// Checks a new Event, in its stored form, as the API server does for the version it was sent to:
/// `events.k8s.io/v1` creations get the strict checks on top of the legacy ones.
pub(crate) fn validate_create(resource: &Resource, event: &Value) -> Vec<FieldError> {
    let mut errors = legacy_errors(event);
    if !is_events_v1(resource) {
        return errors;
    }
    let empty = Value::String(String::new());
    if event.get("series").is_some_and(|s| !s.is_null()) {
        if event
            .pointer("/series/count")
            .and_then(Value::as_i64)
            .is_none_or(|c| c < 2)
        {
            errors.push(FieldError::invalid(
                "series.count",
                &empty,
                "should be at least 2",
            ));
        }
        if !is_set(event, "/series/lastObservedTime") {
            errors.push(FieldError::required("series.lastObservedTime", ""));
        }
    }
    if !is_set(event, "/eventTime") {
        errors.push(FieldError::required("eventTime", ""));
    }
    let type_ = text(event, "/type");
    if type_ != "Normal" && type_ != "Warning" {
        errors.push(FieldError::invalid(
            "type",
            &empty,
            format!("has invalid value: {type_}"),
        ));
    }
    for (pointer, field) in [
        ("/firstTimestamp", "firstTimestamp"),
        ("/lastTimestamp", "lastTimestamp"),
        ("/count", "count"),
    ] {
        if is_set(event, pointer) {
            errors.push(FieldError::invalid(field, &empty, "needs to be unset"));
        }
    }
    if is_set(event, "/source/component") || is_set(event, "/source/host") {
        errors.push(FieldError::invalid("source", &empty, "needs to be unset"));
    }
    errors
}

/// Checks a changed Event, in its stored form.
pub(crate) fn validate_update(event: &Value) -> Vec<FieldError> {
    legacy_errors(event)
}
