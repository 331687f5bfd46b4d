//! `metadata.managedFields`: the record of which server-side apply manager owns which fields,
//! written from the configurations each manager last applied.

use serde_json::{json, Value};

use super::{meta_mut, now, Stored};
use crate::apiserver::{patch, resources::Resource};

/// The object without `metadata.managedFields`.
pub(super) fn without_managed_fields(object: &Value) -> Value {
    let mut object = object.clone();
    if let Some(Value::Object(metadata)) = object.get_mut("metadata") {
        metadata.remove("managedFields");
    }
    object
}

/// Writes `metadata.managedFields` from the apply managers' configurations.
pub(super) fn set_managed_fields(resource: &Resource, stored: &mut Stored) {
    let entries: Vec<Value> = stored
        .applied
        .iter()
        .map(|((manager, subresource), config)| {
            let mut entry = json!({
                "manager": manager,
                "operation": "Apply",
                "apiVersion": resource.api_version(),
                "time": now(),
                "fieldsType": "FieldsV1",
                "fieldsV1": patch::fields_v1(config, resource.shape()),
            });
            if !subresource.is_empty() {
                entry["subresource"] = Value::String(subresource.clone());
            }
            entry
        })
        .collect();
    let metadata = meta_mut(&mut stored.object);
    if entries.is_empty() {
        metadata.remove("managedFields");
    } else {
        metadata.insert("managedFields".to_owned(), Value::Array(entries));
    }
}
