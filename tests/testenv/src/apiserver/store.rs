//! The in-memory object store: objects, the global resourceVersion, the watch history, and the
//! write semantics (metadata, generation, status subresource, deletion); garbage collection and
//! managed fields live in the submodules.

mod admission;
mod gc;
mod managed_fields;

use std::{
    collections::{BTreeMap, VecDeque},
    sync::Arc,
};

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use rand::Rng;
use serde_json::{json, Map, Value};

use self::{
    gc::add_finalizer,
    managed_fields::{set_managed_fields, without_managed_fields},
};
use super::{
    builtin,
    error::{ApiError, ApiResult, FieldError},
    events,
    resources::{GroupResource, Registry, Resource},
    schema,
    selector::{FieldSelector, LabelSelector},
};

/// How many watch events are kept; watching from further back is answered with 410 Expired.
const HISTORY: usize = 10_000;

/// What the server does with fields a custom resource's schema does not declare.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum FieldValidation {
    /// Drop them silently.
    Ignore,
    /// Drop them with a `Warning` header (the default).
    #[default]
    Warn,
    /// Refuse the request.
    Strict,
}

/// Options of one write.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct WriteOptions {
    pub field_validation: FieldValidation,
    pub dry_run: bool,
}

/// Which part of an object a write changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Part {
    /// The object, except status when the resource has a status subresource.
    Main,
    /// Only the status.
    Status,
}

impl Part {
    /// The subresource name used to key server-side apply ownership.
    pub fn subresource(self) -> &'static str {
        match self {
            Self::Main => "",
            Self::Status => "status",
        }
    }
}

/// `DeleteOptions`, from the body and the query.
#[derive(Clone, Debug, Default)]
pub(crate) struct DeleteOptions {
    pub grace_period_seconds: Option<i64>,
    pub propagation_policy: Option<String>,
    pub precondition_uid: Option<String>,
    pub precondition_resource_version: Option<String>,
    pub dry_run: bool,
}

/// The outcome of a delete.
pub(crate) enum Deleted {
    /// The object is gone; this is its last state.
    Removed(Value),
    /// The object is terminating (finalizers or a graceful pod deletion); this is its state.
    Pending(Value),
}

/// A successful create or update.
pub(crate) struct Written {
    pub object: Value,
    /// `Warning` header texts.
    pub warnings: Vec<String>,
}

/// The type of a watch event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

/// A change, as recorded for watches.
#[derive(Debug)]
pub(crate) struct Change {
    pub resource_version: u64,
    pub key: GroupResource,
    pub type_: EventType,
    pub object: Value,
    /// The object before a modification, to send ADDED/DELETED to watches whose selector it
    /// enters or leaves.
    pub old: Option<Value>,
}

/// One stored object and the server-side apply state of its managers.
#[derive(Clone, Debug)]
struct Stored {
    object: Value,
    /// What each manager last applied, by manager and subresource.
    applied: BTreeMap<(String, String), Value>,
}

/// Objects of one group/resource, by namespace and name.
type Bucket = BTreeMap<(String, String), Stored>;

/// The whole state of the server.
pub(crate) struct Store {
    pub registry: Registry,
    objects: BTreeMap<GroupResource, Bucket>,
    resource_version: u64,
    history: VecDeque<Arc<Change>>,
    /// The resourceVersion of the newest change dropped from the history.
    compacted: u64,
    next_cluster_ip: u32,
}

/// What `fieldValidation` makes of the fields a write sent that its version does not have (and
/// that were dropped): a refusal when strict, else the warnings to send.
pub(crate) fn unknown_fields(
    resource: &Resource,
    unknown: &[String],
    validation: FieldValidation,
) -> ApiResult<Vec<String>> {
    if unknown.is_empty() {
        return Ok(Vec::new());
    }
    let listed: Vec<String> = unknown
        .iter()
        .map(|f| format!("unknown field \"{f}\""))
        .collect();
    match validation {
        FieldValidation::Strict => Err(ApiError::bad_request(format!(
            "{kind} in version \"{version}\" cannot be handled as a {kind}: strict decoding error: {}",
            listed.join(", "),
            kind = resource.kind,
            version = resource.version,
        ))),
        FieldValidation::Warn => Ok(listed),
        FieldValidation::Ignore => Ok(Vec::new()),
    }
}

/// The current time as a Kubernetes timestamp.
pub(crate) fn now() -> String {
    format_time(Timestamp::now())
}

fn format_time(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn new_uid() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

fn meta(object: &Value) -> &Value {
    object.get("metadata").unwrap_or(&Value::Null)
}

fn meta_str<'a>(object: &'a Value, field: &str) -> Option<&'a str> {
    meta(object)
        .get(field)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn meta_mut(object: &mut Value) -> &mut Map<String, Value> {
    if !object.get("metadata").is_some_and(Value::is_object) {
        object["metadata"] = json!({});
    }
    match object.get_mut("metadata") {
        Some(Value::Object(m)) => m,
        _ => unreachable!("metadata was just made an object"),
    }
}

/// Whether `resource` is the core resource `plural`.
fn is_core(resource: &Resource, plural: &str) -> bool {
    resource.group.is_empty() && resource.plural == plural
}

fn has_finalizers(object: &Value) -> bool {
    meta(object)
        .get("finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty())
}

/// The object without metadata and, when `without_status`, status: what `generation` tracks.
fn content(object: &Value, without_status: bool) -> Value {
    let mut content = object.clone();
    if let Value::Object(map) = &mut content {
        map.remove("metadata");
        map.remove("apiVersion");
        map.remove("kind");
        if without_status {
            map.remove("status");
        }
    }
    content
}

/// Checks a DNS-1123 subdomain (or label) name.
fn check_name(name: &str, label: bool) -> Option<FieldError> {
    let max = if label { 63 } else { 253 };
    let ok = !name.is_empty()
        && name.len() <= max
        && name.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (c == '.' && !label)
        })
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    (!ok).then(|| {
        let what = if label { "RFC 1123 label" } else { "RFC 1123 subdomain" };
        FieldError::invalid(
            "metadata.name",
            &Value::String(name.to_owned()),
            format!("a lowercase {what} must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"),
        )
    })
}

impl Store {
    /// A store with the built-in resources and the `default`, `kube-system` and `kube-public`
    /// namespaces.
    pub fn new() -> Self {
        let mut store = Self {
            registry: Registry::builtin(),
            objects: BTreeMap::new(),
            resource_version: 0,
            history: VecDeque::new(),
            compacted: 0,
            next_cluster_ip: 1,
        };
        let namespaces = store.registry.get("", "v1", "namespaces").cloned();
        if let Some(namespaces) = namespaces {
            for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
                let namespace =
                    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
                // Creating a fixed, valid namespace in an empty store cannot fail.
                let _ = store.create(&namespaces, None, namespace, WriteOptions::default());
            }
        }
        store
    }

    pub fn resource_version(&self) -> u64 {
        self.resource_version
    }

    /// The resourceVersion below which watches have expired.
    pub fn compacted(&self) -> u64 {
        self.compacted
    }

    /// The changes after `resource_version`, oldest first.
    pub fn changes_since(&self, resource_version: u64) -> Vec<Arc<Change>> {
        let start = self
            .history
            .partition_point(|c| c.resource_version <= resource_version);
        self.history.iter().skip(start).cloned().collect()
    }

    fn bump(&mut self) -> u64 {
        self.resource_version += 1;
        self.resource_version
    }

    /// Gives `object` the next resourceVersion.
    fn stamp(&mut self, object: &mut Value) {
        let resource_version = self.bump();
        meta_mut(object).insert(
            "resourceVersion".to_owned(),
            Value::String(resource_version.to_string()),
        );
    }

    /// Stores a new state of an existing object in place, under the next resourceVersion, and
    /// records the change.
    fn rewrite(
        &mut self,
        key: &GroupResource,
        namespace: &str,
        name: &str,
        object: &mut Value,
        old: Option<Value>,
    ) {
        self.stamp(object);
        if let Some(stored) = self
            .objects
            .get_mut(key)
            .and_then(|b| b.get_mut(&(namespace.to_owned(), name.to_owned())))
        {
            stored.object = object.clone();
        }
        self.record(key.clone(), EventType::Modified, object.clone(), old);
    }

    fn record(&mut self, key: GroupResource, type_: EventType, object: Value, old: Option<Value>) {
        let resource_version = self.resource_version;
        self.history.push_back(Arc::new(Change {
            resource_version,
            key,
            type_,
            object,
            old,
        }));
        while self.history.len() > HISTORY {
            if let Some(dropped) = self.history.pop_front() {
                self.compacted = dropped.resource_version;
            }
        }
    }

    fn stored(&self, key: &GroupResource, namespace: &str, name: &str) -> Option<&Stored> {
        self.objects
            .get(key)?
            .get(&(namespace.to_owned(), name.to_owned()))
    }

    /// One object.
    pub fn get(&self, resource: &Resource, namespace: &str, name: &str) -> ApiResult<Value> {
        self.stored(&resource.key(), namespace, name)
            .map(|s| s.object.clone())
            .ok_or_else(|| ApiError::not_found(resource, name))
    }

    /// The objects of a resource (in one namespace, or all), filtered by selectors.
    pub fn list(
        &self,
        resource: &Resource,
        namespace: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
    ) -> Vec<Value> {
        self.objects
            .get(&resource.key())
            .into_iter()
            .flat_map(|bucket| bucket.iter())
            .filter(|((ns, _), _)| namespace.is_none_or(|wanted| wanted == ns))
            .map(|(_, s)| &s.object)
            .filter(|o| labels.matches(o) && fields.matches(o))
            .cloned()
            .collect()
    }

    /// Checks that a namespace exists.
    pub fn require_namespace(&self, namespace: &str) -> ApiResult<()> {
        if self
            .stored(
                &GroupResource {
                    group: String::new(),
                    plural: "namespaces".to_owned(),
                },
                "",
                namespace,
            )
            .is_some()
        {
            Ok(())
        } else {
            Err(ApiError::not_found_in("", "namespaces", namespace))
        }
    }

    /// Prunes, defaults and validates a custom resource or a CRD; returns field warnings.
    fn admit(
        &self,
        resource: &Resource,
        name: &str,
        object: &mut Value,
        old: Option<&Value>,
        options: WriteOptions,
    ) -> ApiResult<Vec<String>> {
        let mut warnings = Vec::new();
        if let Some(schema) = &resource.schema {
            let unknown = schema::prune_and_default(schema, object);
            warnings = unknown_fields(resource, &unknown, options.field_validation)?;
            let errors = schema::validate(schema, object, old);
            if !errors.is_empty() {
                return Err(ApiError::invalid(resource, name, &errors));
            }
        }
        if events::is_event(resource) {
            let errors = match old {
                None => events::validate_create(resource, object),
                Some(_) => events::validate_update(object),
            };
            if !errors.is_empty() {
                return Err(ApiError::invalid(resource, name, &errors));
            }
        }
        if resource.group == "apiextensions.k8s.io"
            && resource.plural == "customresourcedefinitions"
        {
            super::resources::resources_of_crd(object)?;
            builtin::crd_status(object);
        }
        Ok(warnings)
    }

    /// Creates an object (POST).
    pub fn create(
        &mut self,
        resource: &Resource,
        namespace: Option<&str>,
        mut object: Value,
        options: WriteOptions,
    ) -> ApiResult<Written> {
        self.create_with(resource, namespace, &mut object, options, None)
    }

    /// Creates an object, recording an applied configuration for `manager` when it comes from
    /// server-side apply.
    pub fn create_with(
        &mut self,
        resource: &Resource,
        namespace: Option<&str>,
        object: &mut Value,
        options: WriteOptions,
        applied: Option<(String, Value)>,
    ) -> ApiResult<Written> {
        if !object.is_object() {
            return Err(ApiError::bad_request(
                "the request body must be a JSON object",
            ));
        }
        if let Some(kind) = object.get("kind").and_then(Value::as_str) {
            if kind != resource.kind {
                return Err(ApiError::bad_request(format!(
                    "the kind of the object ({kind}) does not match the kind served here ({})",
                    resource.kind
                )));
            }
        }
        object["apiVersion"] = Value::String(resource.storage_api_version());
        object["kind"] = Value::String(resource.kind.clone());
        let namespace = if resource.namespaced {
            let ns = namespace.ok_or_else(|| {
                ApiError::bad_request("a namespaced resource is created in a namespace")
            })?;
            if let Some(body_ns) = meta_str(object, "namespace") {
                if body_ns != ns {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
            }
            self.require_namespace(ns)?;
            ns.to_owned()
        } else {
            String::new()
        };
        let name = match (meta_str(object, "name"), meta_str(object, "generateName")) {
            (Some(name), _) => name.to_owned(),
            (None, Some(prefix)) => format!("{prefix}{}", random_suffix()),
            (None, None) => {
                return Err(ApiError::invalid(
                    resource,
                    "",
                    &[FieldError::required(
                        "metadata.name",
                        "name or generateName is required",
                    )],
                ))
            }
        };
        if let Some(error) = check_name(&name, resource.plural == "namespaces") {
            return Err(ApiError::invalid(resource, &name, &[error]));
        }
        let key = resource.key();
        if self.stored(&key, &namespace, &name).is_some() {
            return Err(ApiError::already_exists(resource, &name));
        }
        if resource.status {
            if let Value::Object(map) = object {
                map.remove("status");
            }
        }
        {
            let metadata = meta_mut(object);
            for field in [
                "uid",
                "resourceVersion",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "managedFields",
                "selfLink",
            ] {
                metadata.remove(field);
            }
            metadata.insert("name".to_owned(), Value::String(name.clone()));
            if resource.namespaced {
                metadata.insert("namespace".to_owned(), Value::String(namespace.clone()));
            } else {
                metadata.remove("namespace");
            }
        }
        builtin::default_on_create(resource, object, &mut self.next_cluster_ip);
        let warnings = self.admit(resource, &name, object, None, options)?;
        if is_core(resource, "pods") {
            self.admit_pod(&namespace, &name, object)?;
        }
        if options.dry_run {
            return Ok(Written {
                object: object.clone(),
                warnings,
            });
        }
        self.stamp(object);
        let metadata = meta_mut(object);
        metadata.insert("uid".to_owned(), Value::String(new_uid()));
        metadata.insert("creationTimestamp".to_owned(), Value::String(now()));
        metadata.insert("generation".to_owned(), json!(1));
        let mut stored = Stored {
            object: object.clone(),
            applied: BTreeMap::new(),
        };
        if let Some((manager, config)) = applied {
            stored.applied.insert((manager, String::new()), config);
        }
        set_managed_fields(resource, &mut stored);
        let object = stored.object.clone();
        self.objects
            .entry(key.clone())
            .or_default()
            .insert((namespace.clone(), name.clone()), stored);
        self.record(key, EventType::Added, object.clone(), None);
        self.after_create(resource, &namespace, &name, &object)?;
        Ok(Written { object, warnings })
    }

    /// Side effects of creating CRDs, namespaces, pods and quotas.
    fn after_create(
        &mut self,
        resource: &Resource,
        namespace: &str,
        name: &str,
        object: &Value,
    ) -> ApiResult<()> {
        match (resource.group.as_str(), resource.plural.as_str()) {
            ("apiextensions.k8s.io", "customresourcedefinitions") => {
                self.registry.register_crd(object)
            }
            ("", "namespaces") => {
                if let Some(accounts) = self.registry.get("", "v1", "serviceaccounts").cloned() {
                    let account = json!({"metadata": {"name": "default"}});
                    self.create(&accounts, Some(name), account, WriteOptions::default())?;
                }
                Ok(())
            }
            ("", "pods" | "resourcequotas") => {
                self.refresh_quotas(namespace);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The applied configurations of the other managers of an object's subresource.
    pub fn other_applied(
        &self,
        resource: &Resource,
        namespace: &str,
        name: &str,
        manager: &str,
        part: Part,
    ) -> BTreeMap<String, Value> {
        self.stored(&resource.key(), namespace, name)
            .map(|s| {
                s.applied
                    .iter()
                    .filter(|((m, sub), _)| m != manager && sub == part.subresource())
                    .map(|((m, _), v)| (m.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// What `manager` last applied to an object's subresource.
    pub fn applied_by(
        &self,
        resource: &Resource,
        namespace: &str,
        name: &str,
        manager: &str,
        part: Part,
    ) -> Option<Value> {
        self.stored(&resource.key(), namespace, name)?
            .applied
            .get(&(manager.to_owned(), part.subresource().to_owned()))
            .cloned()
    }

    /// Replaces an object or its status (PUT, and the end of every patch).
    ///
    pub fn update(
        &mut self,
        resource: &Resource,
        namespace: &str,
        name: &str,
        mut incoming: Value,
        how: Update,
    ) -> ApiResult<Written> {
        let Update {
            part,
            options,
            applied,
        } = how;
        let key = resource.key();
        let current = self
            .stored(&key, namespace, name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(resource, name))?;
        if !incoming.is_object() {
            return Err(ApiError::bad_request(
                "the request body must be a JSON object",
            ));
        }
        if let Some(body_name) = meta_str(&incoming, "name") {
            if body_name != name {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({body_name}) does not match the name on the URL ({name})"
                )));
            }
        }
        let current_rv = meta_str(&current.object, "resourceVersion")
            .unwrap_or_default()
            .to_owned();
        match meta_str(&incoming, "resourceVersion") {
            Some(rv) if rv != current_rv => return Err(ApiError::modified(resource, name)),
            Some(_) => {}
            None if resource.custom && applied.is_none() => {
                return Err(ApiError::invalid(
                    resource,
                    name,
                    &[FieldError::invalid(
                        "metadata.resourceVersion",
                        &json!("0x0"),
                        "must be specified for an update",
                    )],
                ))
            }
            None => {}
        }
        let mut new = match part {
            Part::Status => {
                let mut new = current.object.clone();
                match incoming.get("status") {
                    Some(status) => new["status"] = status.clone(),
                    None => {
                        if let Value::Object(map) = &mut new {
                            map.remove("status");
                        }
                    }
                }
                new
            }
            Part::Main => {
                if resource.status {
                    match current.object.get("status") {
                        Some(status) => incoming["status"] = status.clone(),
                        None => {
                            if let Value::Object(map) = &mut incoming {
                                map.remove("status");
                            }
                        }
                    }
                }
                let old_meta = meta(&current.object).clone();
                let metadata = meta_mut(&mut incoming);
                for field in [
                    "name",
                    "namespace",
                    "uid",
                    "creationTimestamp",
                    "deletionTimestamp",
                    "deletionGracePeriodSeconds",
                    "generation",
                    "resourceVersion",
                ] {
                    match old_meta.get(field) {
                        Some(v) => metadata.insert(field.to_owned(), v.clone()),
                        None => metadata.remove(field),
                    };
                }
                incoming
            }
        };
        new["apiVersion"] = current
            .object
            .get("apiVersion")
            .cloned()
            .unwrap_or(Value::Null);
        new["kind"] = Value::String(resource.kind.clone());
        let warnings = self.admit(resource, name, &mut new, Some(&current.object), options)?;
        let mut stored = Stored {
            object: new,
            applied: current.applied.clone(),
        };
        if let Some(record) = applied {
            stored.applied.insert(
                (record.manager, part.subresource().to_owned()),
                record.config,
            );
            for (other, config) in record.others {
                stored
                    .applied
                    .insert((other, part.subresource().to_owned()), config);
            }
        }
        // Nothing changed, the apply ownership included: no write, no event.
        if without_managed_fields(&stored.object) == without_managed_fields(&current.object)
            && stored.applied == current.applied
        {
            return Ok(Written {
                object: current.object,
                warnings,
            });
        }
        set_managed_fields(resource, &mut stored);
        let mut new = stored.object.clone();
        if content(&new, resource.status) != content(&current.object, resource.status) {
            let generation = meta(&current.object)
                .get("generation")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            meta_mut(&mut new).insert("generation".to_owned(), json!(generation + 1));
        }
        if options.dry_run {
            return Ok(Written {
                object: new,
                warnings,
            });
        }
        self.stamp(&mut new);
        stored.object = new.clone();
        if let Some(bucket) = self.objects.get_mut(&key) {
            bucket.insert((namespace.to_owned(), name.to_owned()), stored);
        }
        self.record(
            key.clone(),
            EventType::Modified,
            new.clone(),
            Some(current.object),
        );
        if resource.group == "apiextensions.k8s.io"
            && resource.plural == "customresourcedefinitions"
        {
            self.registry.register_crd(&new)?;
        }
        if is_core(resource, "pods") || is_core(resource, "resourcequotas") {
            self.refresh_quotas(namespace);
        }
        if meta(&new).get("deletionTimestamp").is_some()
            && !has_finalizers(&new)
            && !graceful_pending(resource, &new)
        {
            return Ok(Written {
                object: self.remove(&key, namespace, name).unwrap_or(new),
                warnings,
            });
        }
        self.collect_garbage();
        Ok(Written {
            object: new,
            warnings,
        })
    }

    /// Deletes an object: at once, or by marking it terminating when finalizers or a bound pod's
    /// grace period hold it.
    pub fn delete(
        &mut self,
        resource: &Resource,
        namespace: &str,
        name: &str,
        options: &DeleteOptions,
    ) -> ApiResult<Deleted> {
        let key = resource.key();
        let current = self
            .stored(&key, namespace, name)
            .map(|s| s.object.clone())
            .ok_or_else(|| ApiError::not_found(resource, name))?;
        if let Some(uid) = &options.precondition_uid {
            if meta_str(&current, "uid") != Some(uid.as_str()) {
                return Err(ApiError::conflict(
                    resource,
                    name,
                    &format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                        meta_str(&current, "uid").unwrap_or_default()
                    ),
                ));
            }
        }
        if let Some(rv) = &options.precondition_resource_version {
            if meta_str(&current, "resourceVersion") != Some(rv.as_str()) {
                return Err(ApiError::modified(resource, name));
            }
        }
        if options.dry_run {
            return Ok(Deleted::Pending(current));
        }
        let uid = meta_str(&current, "uid").unwrap_or_default().to_owned();
        let mut marked = current.clone();
        let mut changed = false;
        match options.propagation_policy.as_deref() {
            Some("Orphan") => self.orphan_dependents(&uid),
            Some("Foreground") if self.has_dependents(&uid) => {
                changed |= add_finalizer(&mut marked, "foregroundDeletion")
            }
            _ => {}
        }
        let grace = pod_grace_period(resource, &current, options.grace_period_seconds);
        let terminating = meta(&current).get("deletionTimestamp").is_some();
        if let Some(grace) = grace.filter(|g| *g > 0) {
            let shorter = meta(&current)
                .get("deletionGracePeriodSeconds")
                .and_then(Value::as_i64)
                .is_none_or(|g| grace < g);
            if !terminating || shorter {
                let at = Timestamp::now()
                    .checked_add(SignedDuration::from_secs(grace))
                    .unwrap_or_else(|_| Timestamp::now());
                let metadata = meta_mut(&mut marked);
                metadata.insert(
                    "deletionTimestamp".to_owned(),
                    Value::String(format_time(at)),
                );
                metadata.insert("deletionGracePeriodSeconds".to_owned(), json!(grace));
                changed = true;
            }
        } else if has_finalizers(&marked) && !terminating {
            let metadata = meta_mut(&mut marked);
            metadata.insert("deletionTimestamp".to_owned(), Value::String(now()));
            metadata.insert("deletionGracePeriodSeconds".to_owned(), json!(0));
            changed = true;
        }
        if resource.plural == "namespaces" && resource.group.is_empty() {
            return Ok(self.delete_namespace(resource, name, marked));
        }
        if grace.is_some_and(|g| g > 0) || has_finalizers(&marked) {
            if changed {
                self.rewrite(&key, namespace, name, &mut marked, Some(current));
                self.collect_garbage();
            }
            return Ok(Deleted::Pending(marked));
        }
        let removed = self.remove(&key, namespace, name).unwrap_or(current);
        Ok(Deleted::Removed(removed))
    }

    /// Namespaces terminate: their objects are deleted, and the namespace goes when it is empty.
    fn delete_namespace(&mut self, resource: &Resource, name: &str, mut marked: Value) -> Deleted {
        let key = resource.key();
        if meta(&marked).get("deletionTimestamp").is_none() {
            meta_mut(&mut marked).insert("deletionTimestamp".to_owned(), Value::String(now()));
        }
        marked["status"] = json!({"phase": "Terminating"});
        let old = self.stored(&key, "", name).map(|s| s.object.clone());
        self.rewrite(&key, "", name, &mut marked, old);
        self.collect_garbage();
        match self.stored(&resource.key(), "", name) {
            Some(stored) => Deleted::Pending(stored.object.clone()),
            None => Deleted::Removed(marked),
        }
    }

    /// Removes an object for good, with its side effects; returns its last state.
    fn remove(&mut self, key: &GroupResource, namespace: &str, name: &str) -> Option<Value> {
        let stored = self
            .objects
            .get_mut(key)?
            .remove(&(namespace.to_owned(), name.to_owned()))?;
        let mut object = stored.object;
        self.stamp(&mut object);
        self.record(key.clone(), EventType::Deleted, object.clone(), None);
        if key.group.is_empty() && key.plural == "pods" {
            self.refresh_quotas(namespace);
        }
        if key.group == "apiextensions.k8s.io" && key.plural == "customresourcedefinitions" {
            if let Some(gone) = self.registry.unregister_crd(name) {
                let objects: Vec<(String, String)> = self
                    .objects
                    .get(&gone)
                    .map(|b| b.keys().cloned().collect())
                    .unwrap_or_default();
                for (ns, n) in objects {
                    self.remove(&gone, &ns, &n);
                }
                self.objects.remove(&gone);
            }
        }
        self.collect_garbage();
        Some(object)
    }
}

/// How an update writes: which part, with which options, and for server-side apply, the record
/// of the apply.
pub(crate) struct Update {
    pub part: Part,
    pub options: WriteOptions,
    pub applied: Option<ApplyRecord>,
}

impl Update {
    /// A plain (not server-side apply) update.
    pub fn plain(part: Part, options: WriteOptions) -> Self {
        Self {
            part,
            options,
            applied: None,
        }
    }
}

/// The record of a server-side apply, stored with the object: the manager, its configuration,
/// and the other managers' configurations after a forced apply took fields over.
pub(crate) struct ApplyRecord {
    pub manager: String,
    pub config: Value,
    /// Other managers' configurations, rewritten after a forced apply took fields from them.
    pub others: BTreeMap<String, Value>,
}

/// The grace period of deleting a pod, as the real server decides it: none for pods that are
/// not bound to a node or have finished; otherwise the request's, else the pod's
/// `terminationGracePeriodSeconds`, else 30. `None` for every other resource.
fn pod_grace_period(resource: &Resource, pod: &Value, requested: Option<i64>) -> Option<i64> {
    if !(resource.group.is_empty() && resource.plural == "pods") {
        return None;
    }
    let bound = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty());
    let finished = matches!(
        pod.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded" | "Failed")
    );
    if !bound || finished {
        return Some(0);
    }
    Some(
        requested
            .or_else(|| {
                pod.pointer("/spec/terminationGracePeriodSeconds")
                    .and_then(Value::as_i64)
            })
            .unwrap_or(30),
    )
}

/// Whether a terminating pod still waits for its kubelet (a graceful deletion not yet confirmed
/// with a zero grace period).
fn graceful_pending(resource: &Resource, object: &Value) -> bool {
    resource.group.is_empty()
        && resource.plural == "pods"
        && meta(object)
            .get("deletionGracePeriodSeconds")
            .and_then(Value::as_i64)
            .is_some_and(|g| g > 0)
}
