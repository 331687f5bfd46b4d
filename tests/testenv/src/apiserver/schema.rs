//! Structural-schema handling of custom resources, as the API server does it: pruning of unknown
//! fields, defaulting, OpenAPI v3 validation and the CEL `x-kubernetes-validations` rules.

use kube::core::cel::Validator;
use serde_json::{Map, Value};

use super::error::{FieldError, FieldErrorKind};

/// Fields every object keeps at its root whatever the schema says.
const ROOT_FIELDS: [&str; 3] = ["apiVersion", "kind", "metadata"];

/// The `x-kubernetes-list-map-keys` of a list schema: the fields that identify an item.
pub(crate) fn list_map_keys(schema: &Value) -> Vec<String> {
    schema
        .get("x-kubernetes-list-map-keys")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect()
}

/// Removes the fields the schema does not declare and fills in schema defaults, in place.
/// Returns the paths of the removed fields (`spec.foo`), for field validation.
pub(crate) fn prune_and_default(schema: &Value, object: &mut Value) -> Vec<String> {
    let mut unknown = Vec::new();
    if let Value::Object(map) = object {
        let mut rest = Map::new();
        for field in ROOT_FIELDS {
            if let Some(v) = map.remove(field) {
                rest.insert(field.to_owned(), v);
            }
        }
        walk(schema, object, "", &mut unknown);
        if let Value::Object(map) = object {
            map.extend(rest);
        }
    }
    unknown
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn is_true(schema: &Value, key: &str) -> bool {
    schema.get(key).and_then(Value::as_bool) == Some(true)
}

fn walk(schema: &Value, value: &mut Value, path: &str, unknown: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            let empty = Map::new();
            let properties = schema
                .get("properties")
                .and_then(Value::as_object)
                .unwrap_or(&empty);
            for (key, property) in properties {
                let missing = match map.get(key) {
                    None => true,
                    Some(Value::Null) => !is_true(property, "nullable"),
                    Some(_) => false,
                };
                if let (true, Some(default)) = (missing, property.get("default")) {
                    map.insert(key.clone(), default.clone());
                }
            }
            let additional = schema.get("additionalProperties");
            let keep_unknown = is_true(schema, "x-kubernetes-preserve-unknown-fields")
                || additional.and_then(Value::as_bool) == Some(true)
                || (schema.get("type").is_none() && properties.is_empty() && additional.is_none());
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                let child_schema = properties
                    .get(&key)
                    .or_else(|| additional.filter(|a| a.is_object()));
                match child_schema {
                    Some(child_schema) => {
                        if let Some(child) = map.get_mut(&key) {
                            walk(child_schema, child, &join(path, &key), unknown);
                        }
                    }
                    None if keep_unknown => {}
                    None => {
                        map.remove(&key);
                        unknown.push(join(path, &key));
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    walk(item_schema, item, &format!("{path}[{i}]"), unknown);
                }
            }
        }
        _ => {}
    }
}

/// Validates `object` against the schema and, when that passes, against its CEL rules (with
/// `old` for transition rules). Returns every problem found.
pub(crate) fn validate(schema: &Value, object: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if let Value::Object(map) = object {
        let mut body = map.clone();
        for field in ROOT_FIELDS {
            body.remove(field);
        }
        check(schema, &Value::Object(body), "", &mut errors);
    }
    if errors.is_empty() {
        if let Err(failures) = Validator::new().validate(schema, object, old) {
            for failure in failures.iter() {
                let type_name = schema_at(schema, &failure.field_path)
                    .and_then(|s| s.get("type"))
                    .and_then(Value::as_str)
                    .unwrap_or("object");
                errors.push(FieldError::invalid(
                    failure.field_path.trim_start_matches('.'),
                    &Value::String(type_name.to_owned()),
                    failure.message.clone(),
                ));
            }
        }
    }
    errors
}

/// The schema node of a field path such as `spec.workerGroups[0].name`.
fn schema_at<'a>(schema: &'a Value, path: &str) -> Option<&'a Value> {
    let mut node = schema;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (name, indexed) = match part.split_once('[') {
            Some((name, _)) => (name, true),
            None => (part, false),
        };
        if !name.is_empty() {
            node = node
                .get("properties")
                .and_then(|p| p.get(name))
                .or_else(|| node.get("additionalProperties").filter(|a| a.is_object()))?;
        }
        if indexed {
            node = node.get("items")?;
        }
    }
    Some(node)
}

/// The JSON type of a value as the schema names it.
fn type_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn type_matches(expected: &str, value: &Value) -> bool {
    match expected {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "number" => value.is_number(),
        "integer" => {
            value.is_i64() || value.is_u64() || value.as_f64().is_some_and(|f| f.fract() == 0.0)
        }
        _ => true,
    }
}

/// A bound as Go's `%v` prints a float64: `0`, `1.5`.
fn bound(value: &Value) -> String {
    match value.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
        Some(f) => f.to_string(),
        None => value.to_string(),
    }
}

fn check(schema: &Value, value: &Value, path: &str, errors: &mut Vec<FieldError>) {
    let shown = if path.is_empty() {
        "body".to_owned()
    } else {
        path.to_owned()
    };
    let type_error = |expected: &str| {
        FieldError::invalid(
            path,
            &Value::String(type_of(value).to_owned()),
            format!(
                "{shown} in body must be of type {expected}: \"{}\"",
                type_of(value)
            ),
        )
    };
    if value.is_null() {
        if !is_true(schema, "nullable") && schema.get("type").is_some() {
            let expected = schema
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("object");
            errors.push(type_error(expected));
        }
        return;
    }
    if is_true(schema, "x-kubernetes-int-or-string") {
        if !(value.is_string() || type_matches("integer", value)) {
            errors.push(type_error("integer-or-string"));
            return;
        }
    } else if let Some(expected) = schema.get("type").and_then(Value::as_str) {
        if !type_matches(expected, value) {
            errors.push(type_error(expected));
            return;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        if !allowed.contains(value) {
            let listed: Vec<String> = allowed.iter().map(Value::to_string).collect();
            errors.push(FieldError::new(
                path,
                FieldErrorKind::NotSupported(value.clone()),
                format!("supported values: {}", listed.join(", ")),
            ));
        }
    }
    match value {
        Value::Number(n) => check_number(
            schema,
            value,
            n.as_f64().unwrap_or_default(),
            path,
            &shown,
            errors,
        ),
        Value::String(s) => check_string(schema, value, s, path, &shown, errors),
        Value::Array(items) => check_array(schema, items, path, &shown, errors),
        Value::Object(map) => check_object(schema, map, path, errors),
        _ => {}
    }
}

fn check_number(
    schema: &Value,
    value: &Value,
    n: f64,
    path: &str,
    shown: &str,
    errors: &mut Vec<FieldError>,
) {
    if let Some(min) = schema.get("minimum").filter(|m| m.is_number()) {
        let limit = min.as_f64().unwrap_or_default();
        let exclusive = is_true(schema, "exclusiveMinimum");
        if n < limit || (exclusive && n == limit) {
            let how = if exclusive {
                "greater than"
            } else {
                "greater than or equal to"
            };
            errors.push(FieldError::invalid(
                path,
                value,
                format!("{shown} in body should be {how} {}", bound(min)),
            ));
        }
    }
    if let Some(max) = schema.get("maximum").filter(|m| m.is_number()) {
        let limit = max.as_f64().unwrap_or_default();
        let exclusive = is_true(schema, "exclusiveMaximum");
        if n > limit || (exclusive && n == limit) {
            let how = if exclusive {
                "less than"
            } else {
                "less than or equal to"
            };
            errors.push(FieldError::invalid(
                path,
                value,
                format!("{shown} in body should be {how} {}", bound(max)),
            ));
        }
    }
}

fn check_string(
    schema: &Value,
    value: &Value,
    s: &str,
    path: &str,
    shown: &str,
    errors: &mut Vec<FieldError>,
) {
    let chars = s.chars().count() as u64;
    if let Some(min) = schema.get("minLength").and_then(Value::as_u64) {
        if chars < min {
            errors.push(FieldError::invalid(
                path,
                value,
                format!("{shown} in body should be at least {min} chars long"),
            ));
        }
    }
    if let Some(max) = schema.get("maxLength").and_then(Value::as_u64) {
        if chars > max {
            errors.push(FieldError::new(
                path,
                FieldErrorKind::TooLong,
                format!("may not be more than {max} bytes"),
            ));
        }
    }
    if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
        if let Ok(re) = regex::Regex::new(pattern) {
            if !re.is_match(s) {
                errors.push(FieldError::invalid(
                    path,
                    value,
                    format!("{shown} in body should match '{pattern}'"),
                ));
            }
        }
    }
}

fn check_array(
    schema: &Value,
    items: &[Value],
    path: &str,
    shown: &str,
    errors: &mut Vec<FieldError>,
) {
    let len = items.len() as u64;
    if let Some(min) = schema.get("minItems").and_then(Value::as_u64) {
        if len < min {
            errors.push(FieldError::invalid(
                path,
                &Value::from(len),
                format!("{shown} in body should have at least {min} items"),
            ));
        }
    }
    if let Some(max) = schema.get("maxItems").and_then(Value::as_u64) {
        if len > max {
            errors.push(FieldError::new(
                path,
                FieldErrorKind::TooMany(Value::from(len)),
                format!("must have at most {max} items"),
            ));
        }
    }
    match schema.get("x-kubernetes-list-type").and_then(Value::as_str) {
        Some("set") => {
            for (i, item) in items.iter().enumerate() {
                if items[..i].contains(item) {
                    errors.push(FieldError::new(
                        format!("{path}[{i}]"),
                        FieldErrorKind::Duplicate(item.clone()),
                        "",
                    ));
                }
            }
        }
        Some("map") => {
            let keys = list_map_keys(schema);
            let identity = |item: &Value| -> Map<String, Value> {
                keys.iter()
                    .filter_map(|k| item.get(k).map(|v| (k.clone(), v.clone())))
                    .collect()
            };
            for (i, item) in items.iter().enumerate() {
                let id = identity(item);
                if items[..i].iter().any(|earlier| identity(earlier) == id) {
                    errors.push(FieldError::new(
                        format!("{path}[{i}]"),
                        FieldErrorKind::Duplicate(Value::Object(id)),
                        "",
                    ));
                }
            }
        }
        _ => {}
    }
    if let Some(item_schema) = schema.get("items") {
        for (i, item) in items.iter().enumerate() {
            check(item_schema, item, &format!("{path}[{i}]"), errors);
        }
    }
}

fn check_object(
    schema: &Value,
    map: &Map<String, Value>,
    path: &str,
    errors: &mut Vec<FieldError>,
) {
    for required in schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        if !map.contains_key(required) {
            errors.push(FieldError::required(join(path, required), ""));
        }
    }
    let properties = schema.get("properties").and_then(Value::as_object);
    let additional = schema.get("additionalProperties").filter(|a| a.is_object());
    for (key, child) in map {
        let child_path = join(path, key);
        if let Some(child_schema) = properties.and_then(|p| p.get(key)).or(additional) {
            check(child_schema, child, &child_path, errors);
        }
    }
}
