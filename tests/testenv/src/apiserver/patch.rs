//! The patch types of the Kubernetes API: JSON patch, strategic merge patch and server-side apply
//! (JSON merge patch is `json_patch::merge`, applied by the PATCH handler).

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::{
    error::{ApiError, ApiResult},
    resources::{item_key, ListKind, Shape},
};

/// The `Content-Type`s of PATCH.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PatchType {
    Merge,
    Json,
    Strategic,
    Apply,
}

impl PatchType {
    pub fn from_content_type(content_type: &str) -> ApiResult<Self> {
        let media = content_type.split(';').next().unwrap_or_default().trim();
        match media {
            "application/merge-patch+json" => Ok(Self::Merge),
            "application/json-patch+json" => Ok(Self::Json),
            "application/strategic-merge-patch+json" => Ok(Self::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => Ok(Self::Apply),
            other => Err(ApiError::unsupported_media_type(other)),
        }
    }
}

/// RFC 6902 JSON patch.
pub(crate) fn json_patch(target: &mut Value, patch: &Value) -> ApiResult<()> {
    let operations: json_patch::Patch = serde_json::from_value(patch.clone())
        .map_err(|e| ApiError::bad_request(format!("the JSON patch is not valid: {e}")))?;
    json_patch::patch(target, &operations)
        .map_err(|e| ApiError::bad_request(format!("the JSON patch could not be applied: {e}")))
}

/// Strategic merge patch: a merge patch whose lists of objects are merged by their merge key
/// (containers by name, ...) and which understands the `$patch` and `$deleteFromPrimitiveList`
/// directives.
pub(crate) fn strategic_merge_patch(target: &mut Value, patch: &Value, shape: Shape<'_>) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if patch.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut replacement = patch.clone();
        replacement.remove("$patch");
        *target = Value::Object(replacement);
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(map) = target else { return };
    for (key, value) in patch {
        if key == "$patch" || key.starts_with("$setElementOrder/") || key.starts_with("$retainKeys")
        {
            continue;
        }
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(items)), Value::Array(gone)) = (map.get_mut(field), value) {
                items.retain(|i| !gone.contains(i));
            }
            continue;
        }
        let child = shape.child(key);
        match value {
            Value::Null => {
                map.remove(key);
            }
            Value::Array(items) => {
                let kind = child.list_kind(items);
                let current = map.entry(key.clone()).or_insert(Value::Array(Vec::new()));
                merge_list(current, items, &kind, child.items());
            }
            Value::Object(_) => {
                strategic_merge_patch(map.entry(key.clone()).or_insert(Value::Null), value, child)
            }
            _ => {
                map.insert(key.clone(), value.clone());
            }
        }
    }
}

fn merge_list(current: &mut Value, patch_items: &[Value], kind: &ListKind, items_shape: Shape<'_>) {
    match kind {
        ListKind::Atomic => *current = Value::Array(patch_items.to_vec()),
        ListKind::Set => {
            if !current.is_array() {
                *current = Value::Array(Vec::new());
            }
            if let Value::Array(list) = current {
                for item in patch_items {
                    if !list.contains(item) {
                        list.push(item.clone());
                    }
                }
            }
        }
        ListKind::Map(keys) => {
            if !current.is_array() {
                *current = Value::Array(Vec::new());
            }
            let Value::Array(list) = current else { return };
            for item in patch_items {
                let key = item_key(item, keys);
                let position = list
                    .iter()
                    .position(|existing| item_key(existing, keys) == key);
                let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
                match (position, delete) {
                    (Some(i), true) => {
                        list.remove(i);
                    }
                    (None, true) => {}
                    (Some(i), false) => strategic_merge_patch(&mut list[i], item, items_shape),
                    (None, false) => {
                        let mut fresh = Value::Null;
                        strategic_merge_patch(&mut fresh, item, items_shape);
                        list.push(fresh);
                    }
                }
            }
        }
    }
}

/// A field owned by another manager that an apply would change.
#[derive(Clone, Debug)]
pub(crate) struct Conflict {
    pub manager: String,
    pub field: String,
}

/// Server-side apply of `applied` (the manager's full intent) onto `live`.
///
/// `previous` is what this manager applied last time; fields it held then and no longer
/// applies are removed unless another manager (`others`) applies them too. Lists merge by their
/// list type (keyed lists by key, sets by value, the rest atomically).
pub(crate) fn server_side_apply(
    live: &mut Value,
    previous: Option<&Value>,
    applied: &Value,
    others: &[&Value],
    shape: Shape<'_>,
) {
    if let Some(previous) = previous {
        remove_dropped(live, previous, applied, others, shape);
    }
    merge_applied(live, applied, shape);
}

fn remove_dropped(
    live: &mut Value,
    previous: &Value,
    applied: &Value,
    others: &[&Value],
    shape: Shape<'_>,
) {
    match (live, previous) {
        (Value::Object(live), Value::Object(previous)) => {
            for (key, before) in previous {
                if matches!(key.as_str(), "apiVersion" | "kind") {
                    continue;
                }
                let now = applied.get(key);
                let other_children: Vec<&Value> =
                    others.iter().filter_map(|o| o.get(key)).collect();
                match now {
                    None if other_children.is_empty() => {
                        live.remove(key);
                    }
                    None => {}
                    Some(now) => {
                        if let Some(child) = live.get_mut(key) {
                            remove_dropped(child, before, now, &other_children, shape.child(key));
                        }
                    }
                }
            }
        }
        (Value::Array(live), Value::Array(previous)) => {
            let now = applied.as_array().map(Vec::as_slice).unwrap_or_default();
            match shape.list_kind(previous) {
                ListKind::Atomic => {}
                ListKind::Set => {
                    let kept_by_others = |item: &Value| {
                        others
                            .iter()
                            .any(|o| o.as_array().is_some_and(|a| a.contains(item)))
                    };
                    live.retain(|item| {
                        !previous.contains(item) || now.contains(item) || kept_by_others(item)
                    });
                }
                ListKind::Map(keys) => {
                    let find = |list: &[Value], key: &[Value]| {
                        list.iter().find(|i| item_key(i, &keys) == key).cloned()
                    };
                    live.retain_mut(|item| {
                        let key = item_key(item, &keys);
                        let Some(before) = find(previous, &key) else {
                            return true;
                        };
                        let other_items: Vec<Value> = others
                            .iter()
                            .filter_map(|o| o.as_array().and_then(|a| find(a, &key)))
                            .collect();
                        match find(now, &key) {
                            None => !other_items.is_empty(),
                            Some(now_item) => {
                                let refs: Vec<&Value> = other_items.iter().collect();
                                remove_dropped(item, &before, &now_item, &refs, shape.items());
                                true
                            }
                        }
                    });
                }
            }
        }
        _ => {}
    }
}

fn merge_applied(live: &mut Value, applied: &Value, shape: Shape<'_>) {
    match applied {
        Value::Object(applied) => {
            if !live.is_object() {
                *live = Value::Object(Map::new());
            }
            if let Value::Object(map) = live {
                for (key, value) in applied {
                    merge_applied(
                        map.entry(key.clone()).or_insert(Value::Null),
                        value,
                        shape.child(key),
                    );
                }
            }
        }
        Value::Array(items) => match shape.list_kind(items) {
            ListKind::Atomic => *live = applied.clone(),
            ListKind::Set => merge_list(live, items, &ListKind::Set, shape.items()),
            ListKind::Map(keys) => {
                if !live.is_array() {
                    *live = Value::Array(Vec::new());
                }
                if let Value::Array(list) = live {
                    for item in items {
                        let key = item_key(item, &keys);
                        match list
                            .iter_mut()
                            .find(|existing| item_key(existing, &keys) == key)
                        {
                            Some(existing) => merge_applied(existing, item, shape.items()),
                            None => list.push(item.clone()),
                        }
                    }
                }
            }
        },
        _ => *live = applied.clone(),
    }
}

/// The leaf fields (`.spec.replicas`) on which `applied` disagrees with what other managers apply.
pub(crate) fn conflicts(
    applied: &Value,
    others: &BTreeMap<String, Value>,
    shape: Shape<'_>,
) -> Vec<Conflict> {
    let mut found = Vec::new();
    for (manager, theirs) in others {
        let mut fields = Vec::new();
        differing_leaves(applied, theirs, "", shape, &mut fields);
        found.extend(fields.into_iter().map(|field| Conflict {
            manager: manager.clone(),
            field,
        }));
    }
    found
}

fn differing_leaves(
    mine: &Value,
    theirs: &Value,
    path: &str,
    shape: Shape<'_>,
    out: &mut Vec<String>,
) {
    match (mine, theirs) {
        (Value::Object(mine), Value::Object(theirs)) => {
            for (key, value) in mine {
                if path.is_empty() && matches!(key.as_str(), "apiVersion" | "kind") {
                    continue;
                }
                if let Some(other) = theirs.get(key) {
                    differing_leaves(
                        value,
                        other,
                        &format!("{path}.{key}"),
                        shape.child(key),
                        out,
                    );
                }
            }
        }
        (Value::Array(mine), Value::Array(theirs)) => match shape.list_kind(mine) {
            ListKind::Map(keys) => {
                for item in mine {
                    let key = item_key(item, &keys);
                    if let Some(other) = theirs.iter().find(|o| item_key(o, &keys) == key) {
                        let label = serde_json::to_string(&key).unwrap_or_default();
                        differing_leaves(
                            item,
                            other,
                            &format!("{path}[{label}]"),
                            shape.items(),
                            out,
                        );
                    }
                }
            }
            ListKind::Set => {}
            ListKind::Atomic if mine != theirs => out.push(path.to_owned()),
            ListKind::Atomic => {}
        },
        (mine, theirs) if mine != theirs => out.push(path.to_owned()),
        _ => {}
    }
}

/// Removes from `theirs` the fields listed in `fields` (as [`conflicts`] names them), so a forced
/// apply takes them over.
pub(crate) fn release_fields(theirs: &mut Value, applied: &Value, shape: Shape<'_>) {
    match (theirs, applied) {
        (Value::Object(theirs), Value::Object(applied)) => {
            let keys: Vec<String> = theirs.keys().cloned().collect();
            for key in keys {
                let Some(mine) = applied.get(&key) else {
                    continue;
                };
                if matches!(key.as_str(), "apiVersion" | "kind" | "metadata") && !mine.is_object() {
                    continue;
                }
                let leaf = !(mine.is_object()
                    || mine.is_array()
                        && shape
                            .child(&key)
                            .list_kind(mine.as_array().map(Vec::as_slice).unwrap_or_default())
                            != ListKind::Atomic);
                if leaf {
                    theirs.remove(&key);
                } else if let Some(child) = theirs.get_mut(&key) {
                    release_fields(child, mine, shape.child(&key));
                }
            }
        }
        (Value::Array(theirs), Value::Array(applied)) => {
            if let ListKind::Map(keys) = shape.list_kind(applied) {
                for item in theirs.iter_mut() {
                    let key = item_key(item, &keys);
                    if let Some(mine) = applied.iter().find(|a| item_key(a, &keys) == key) {
                        release_fields(item, mine, shape.items());
                    }
                }
            }
        }
        _ => {}
    }
}

/// The `fieldsV1` of `managedFields` for an applied configuration.
pub(crate) fn fields_v1(applied: &Value, shape: Shape<'_>) -> Value {
    let mut out = Map::new();
    match applied {
        Value::Object(map) => {
            for (key, value) in map {
                if matches!(key.as_str(), "apiVersion" | "kind") {
                    continue;
                }
                let child = shape.child(key);
                let inner = match value {
                    Value::Object(_) => fields_v1(value, child),
                    Value::Array(items) => list_fields(items, child),
                    _ => Value::Object(Map::new()),
                };
                out.insert(format!("f:{key}"), inner);
            }
        }
        Value::Array(items) => return list_fields(items, shape),
        _ => {}
    }
    Value::Object(out)
}

fn list_fields(items: &[Value], shape: Shape<'_>) -> Value {
    let mut out = Map::new();
    match shape.list_kind(items) {
        ListKind::Atomic => {}
        ListKind::Set => {
            for item in items {
                out.insert(format!("v:{item}"), Value::Object(Map::new()));
            }
        }
        ListKind::Map(keys) => {
            for item in items {
                let id: Map<String, Value> = keys
                    .iter()
                    .zip(item_key(item, &keys))
                    .map(|(k, v)| (k.clone(), v))
                    .collect();
                let mut inner = fields_v1(item, shape.items());
                if let Value::Object(inner) = &mut inner {
                    inner.insert(".".to_owned(), Value::Object(Map::new()));
                }
                out.insert(format!("k:{}", Value::Object(id)), inner);
            }
        }
    }
    Value::Object(out)
}
