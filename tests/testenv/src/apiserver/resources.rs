//! The resources the server serves: the built-in kinds and those registered by CRDs.

use std::{collections::BTreeMap, sync::Arc};

use serde_json::Value;

use super::{
    error::{ApiError, ApiResult},
    events, schema,
};

/// Where a CRD's scale subresource reads and writes replicas.
#[derive(Clone, Debug)]
pub(crate) struct ScaleSpec {
    pub spec_replicas_path: String,
    pub status_replicas_path: String,
    pub label_selector_path: Option<String>,
}

/// One `additionalPrinterColumns` entry.
#[derive(Clone, Debug)]
pub(crate) struct PrinterColumn {
    pub name: String,
    pub type_: String,
    pub format: String,
    pub description: String,
    pub json_path: String,
    pub priority: i64,
}

/// A served resource of one group/version.
#[derive(Clone, Debug)]
pub(crate) struct Resource {
    /// `""` for the core group.
    pub group: String,
    pub version: String,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    /// Whether `/status` is a subresource (then the main resource ignores status writes).
    pub status: bool,
    pub scale: Option<ScaleSpec>,
    /// Whether `/binding` is a subresource (pods).
    pub binding: bool,
    /// The openAPIV3Schema of a custom resource; built-ins are not validated against a schema.
    pub schema: Option<Arc<Value>>,
    pub printer_columns: Vec<PrinterColumn>,
    /// Whether it comes from a CRD.
    pub custom: bool,
}

impl Resource {
    /// `v1` or `flotilla.dev/v1alpha1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `pods` or `computeclusters.flotilla.dev`.
    pub fn group_resource(&self) -> String {
        super::error::qualified(&self.group, &self.plural)
    }

    /// `Pod` or `ComputeCluster.flotilla.dev`.
    pub fn qualified_kind(&self) -> String {
        super::error::qualified(&self.group, &self.kind)
    }

    /// The storage key: objects are shared by every version of a group/resource, and
    /// `events.k8s.io` Events are core Events.
    pub fn key(&self) -> GroupResource {
        if events::is_events_v1(self) {
            return GroupResource {
                group: String::new(),
                plural: self.plural.clone(),
            };
        }
        GroupResource {
            group: self.group.clone(),
            plural: self.plural.clone(),
        }
    }

    /// The apiVersion objects of this resource are stored in.
    pub fn storage_api_version(&self) -> String {
        if events::is_events_v1(self) {
            "v1".to_owned()
        } else {
            self.api_version()
        }
    }

    /// A stored object as this version serves it.
    pub fn present(&self, object: Value) -> Value {
        let mut object = events::from_storage(self, object);
        object["apiVersion"] = Value::String(self.api_version());
        object
    }

    /// The list semantics of the root of an object of this resource.
    pub fn shape(&self) -> Shape<'_> {
        Shape {
            schema: self.schema.as_deref(),
            field: "",
            custom: self.custom,
        }
    }

    /// The verbs served on the main resource.
    pub fn verbs(&self) -> Vec<&'static str> {
        vec![
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ]
    }
}

/// A group and a plural resource name: the unit of storage.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct GroupResource {
    pub group: String,
    pub plural: String,
}

/// Builds a built-in resource.
struct Builtin {
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
    short_names: &'static [&'static str],
    categories: &'static [&'static str],
    status: bool,
    binding: bool,
}

impl Builtin {
    /// A namespaced `v1` resource in no category, without status or binding subresource.
    const fn new(
        group: &'static str,
        plural: &'static str,
        kind: &'static str,
        short_names: &'static [&'static str],
    ) -> Self {
        Self {
            group,
            version: "v1",
            plural,
            kind,
            namespaced: true,
            short_names,
            categories: &[],
            status: false,
            binding: false,
        }
    }
}

const BUILTINS: &[Builtin] = &[
    Builtin {
        namespaced: false,
        status: true,
        ..Builtin::new("", "namespaces", "Namespace", &["ns"])
    },
    Builtin {
        categories: &["all"],
        status: true,
        binding: true,
        ..Builtin::new("", "pods", "Pod", &["po"])
    },
    Builtin {
        categories: &["all"],
        status: true,
        ..Builtin::new("", "services", "Service", &["svc"])
    },
    Builtin::new("", "secrets", "Secret", &[]),
    Builtin::new("", "configmaps", "ConfigMap", &["cm"]),
    Builtin::new("", "serviceaccounts", "ServiceAccount", &["sa"]),
    Builtin {
        status: true,
        ..Builtin::new("", "resourcequotas", "ResourceQuota", &["quota"])
    },
    Builtin::new("", "events", "Event", &["ev"]),
    Builtin {
        namespaced: false,
        status: true,
        ..Builtin::new("", "nodes", "Node", &["no"])
    },
    Builtin::new("events.k8s.io", "events", "Event", &["ev"]),
    Builtin::new("coordination.k8s.io", "leases", "Lease", &[]),
    // What the operator's Helm chart installs, so the chart can be installed here too.
    Builtin {
        categories: &["all"],
        status: true,
        ..Builtin::new("apps", "deployments", "Deployment", &["deploy"])
    },
    Builtin::new("rbac.authorization.k8s.io", "roles", "Role", &[]),
    Builtin::new(
        "rbac.authorization.k8s.io",
        "rolebindings",
        "RoleBinding",
        &[],
    ),
    Builtin {
        namespaced: false,
        ..Builtin::new(
            "rbac.authorization.k8s.io",
            "clusterroles",
            "ClusterRole",
            &[],
        )
    },
    Builtin {
        namespaced: false,
        ..Builtin::new(
            "rbac.authorization.k8s.io",
            "clusterrolebindings",
            "ClusterRoleBinding",
            &[],
        )
    },
    Builtin {
        namespaced: false,
        categories: &["api-extensions"],
        status: true,
        ..Builtin::new(
            "apiextensions.k8s.io",
            "customresourcedefinitions",
            "CustomResourceDefinition",
            &["crd", "crds"],
        )
    },
];

/// The served resources, by group, version and plural name.
#[derive(Clone, Debug)]
pub(crate) struct Registry {
    resources: BTreeMap<(String, String, String), Resource>,
    /// Bumped whenever the set of resources changes (the OpenAPI documents' hash).
    pub generation: u64,
}

impl Registry {
    /// The built-in resources.
    pub fn builtin() -> Self {
        let mut resources = BTreeMap::new();
        for b in BUILTINS {
            let resource = Resource {
                group: b.group.to_owned(),
                version: b.version.to_owned(),
                plural: b.plural.to_owned(),
                singular: b.kind.to_lowercase(),
                kind: b.kind.to_owned(),
                namespaced: b.namespaced,
                short_names: b.short_names.iter().map(|s| (*s).to_owned()).collect(),
                categories: b.categories.iter().map(|s| (*s).to_owned()).collect(),
                status: b.status,
                scale: None,
                binding: b.binding,
                schema: None,
                printer_columns: Vec::new(),
                custom: false,
            };
            resources.insert(
                (
                    resource.group.clone(),
                    resource.version.clone(),
                    resource.plural.clone(),
                ),
                resource,
            );
        }
        Self {
            resources,
            generation: 1,
        }
    }

    pub fn get(&self, group: &str, version: &str, plural: &str) -> Option<&Resource> {
        self.resources
            .get(&(group.to_owned(), version.to_owned(), plural.to_owned()))
    }

    /// Any version of a group/resource (for storage-level operations such as garbage collection).
    pub fn any_version(&self, key: &GroupResource) -> Option<&Resource> {
        self.resources
            .values()
            .find(|r| r.group == key.group && r.plural == key.plural)
    }

    pub fn all(&self) -> impl Iterator<Item = &Resource> {
        self.resources.values()
    }

    /// The served group/versions, each with its resources, in a stable order (core first).
    pub fn group_versions(&self) -> BTreeMap<(String, String), Vec<&Resource>> {
        let mut out: BTreeMap<(String, String), Vec<&Resource>> = BTreeMap::new();
        for r in self.resources.values() {
            out.entry((r.group.clone(), r.version.clone()))
                .or_default()
                .push(r);
        }
        out
    }

    /// Registers (or re-registers) the resources a CRD defines.
    pub fn register_crd(&mut self, crd: &Value) -> ApiResult<()> {
        let resources = resources_of_crd(crd)?;
        let name = crd
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        self.unregister_crd(name);
        for r in resources {
            self.resources
                .insert((r.group.clone(), r.version.clone(), r.plural.clone()), r);
        }
        self.generation += 1;
        Ok(())
    }

    /// Removes the resources a CRD named `name` (`plural.group`) defines; returns their storage key.
    pub fn unregister_crd(&mut self, name: &str) -> Option<GroupResource> {
        let (plural, group) = name.split_once('.')?;
        let before = self.resources.len();
        self.resources
            .retain(|_, r| !(r.custom && r.group == group && r.plural == plural));
        if before == self.resources.len() {
            return None;
        }
        self.generation += 1;
        Some(GroupResource {
            group: group.to_owned(),
            plural: plural.to_owned(),
        })
    }
}

/// Checks a CRD and returns the resources of its served versions.
pub(crate) fn resources_of_crd(crd: &Value) -> ApiResult<Vec<Resource>> {
    let spec = crd
        .get("spec")
        .ok_or_else(|| ApiError::bad_request("CustomResourceDefinition has no spec"))?;
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
    let strings = |v: Option<&Value>| -> Vec<String> {
        v.and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect()
    };
    let group =
        text(spec.get("group")).ok_or_else(|| ApiError::bad_request("spec.group is required"))?;
    let names = spec
        .get("names")
        .ok_or_else(|| ApiError::bad_request("spec.names is required"))?;
    let plural = text(names.get("plural"))
        .ok_or_else(|| ApiError::bad_request("spec.names.plural is required"))?;
    let kind = text(names.get("kind"))
        .ok_or_else(|| ApiError::bad_request("spec.names.kind is required"))?;
    let singular = text(names.get("singular")).unwrap_or_else(|| kind.to_lowercase());
    let namespaced = spec.get("scope").and_then(Value::as_str) != Some("Cluster");
    let mut out = Vec::new();
    for version in spec
        .get("versions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if version.get("served").and_then(Value::as_bool) == Some(false) {
            continue;
        }
        let Some(name) = text(version.get("name")) else {
            continue;
        };
        let subresources = version.get("subresources");
        let scale = subresources
            .and_then(|s| s.get("scale"))
            .map(|s| ScaleSpec {
                spec_replicas_path: text(s.get("specReplicasPath"))
                    .unwrap_or_else(|| ".spec.replicas".to_owned()),
                status_replicas_path: text(s.get("statusReplicasPath"))
                    .unwrap_or_else(|| ".status.replicas".to_owned()),
                label_selector_path: text(s.get("labelSelectorPath")),
            });
        let printer_columns = version
            .get("additionalPrinterColumns")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| {
                Some(PrinterColumn {
                    name: text(c.get("name"))?,
                    type_: text(c.get("type")).unwrap_or_else(|| "string".to_owned()),
                    format: text(c.get("format")).unwrap_or_default(),
                    description: text(c.get("description")).unwrap_or_default(),
                    json_path: text(c.get("jsonPath"))?,
                    priority: c.get("priority").and_then(Value::as_i64).unwrap_or(0),
                })
            })
            .collect();
        out.push(Resource {
            group: group.clone(),
            version: name,
            plural: plural.clone(),
            singular: singular.clone(),
            kind: kind.clone(),
            namespaced,
            short_names: strings(names.get("shortNames")),
            categories: strings(names.get("categories")),
            status: subresources.and_then(|s| s.get("status")).is_some(),
            scale,
            binding: false,
            schema: version
                .pointer("/schema/openAPIV3Schema")
                .cloned()
                .map(Arc::new),
            printer_columns,
            custom: true,
        });
    }
    if out.is_empty() {
        return Err(ApiError::bad_request(
            "a CustomResourceDefinition must serve at least one version",
        ));
    }
    Ok(out)
}

/// How a list is merged by patches and server-side apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ListKind {
    /// Replaced as a whole.
    Atomic,
    /// Items are objects identified by these keys.
    Map(Vec<String>),
    /// Items are scalars, each kept once.
    Set,
}

/// The position of a value inside an object, for choosing list semantics: the schema node of a
/// custom resource, or for built-ins the field name (Kubernetes' `patchMergeKey`s).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Shape<'a> {
    schema: Option<&'a Value>,
    field: &'a str,
    custom: bool,
}

impl<'a> Shape<'a> {
    /// The shape of the field `key` of an object of this shape.
    pub fn child(self, key: &'a str) -> Self {
        let schema = self.schema.and_then(|s| {
            s.get("properties")
                .and_then(|p| p.get(key))
                .or_else(|| s.get("additionalProperties").filter(|a| a.is_object()))
        });
        Self {
            schema,
            field: key,
            custom: self.custom,
        }
    }

    /// The shape of the items of a list of this shape.
    pub fn items(self) -> Self {
        Self {
            schema: self.schema.and_then(|s| s.get("items")),
            ..self
        }
    }

    /// The merge semantics of a list of this shape holding `items`.
    pub fn list_kind(self, items: &[Value]) -> ListKind {
        if let Some(schema) = self.schema {
            return match schema.get("x-kubernetes-list-type").and_then(Value::as_str) {
                Some("map") => ListKind::Map(schema::list_map_keys(schema)),
                Some("set") => ListKind::Set,
                _ => ListKind::Atomic,
            };
        }
        let keys: &[&str] = match self.field {
            "containers"
            | "initContainers"
            | "ephemeralContainers"
            | "volumes"
            | "env"
            | "imagePullSecrets"
            | "resourceClaims" => &["name"],
            "volumeMounts" => &["mountPath"],
            "volumeDevices" => &["devicePath"],
            "hostAliases" => &["ip"],
            "conditions" => &["type"],
            "ownerReferences" => &["uid"],
            "topologySpreadConstraints" => &["topologyKey", "whenUnsatisfiable"],
            "ports" if items.iter().any(|i| i.get("containerPort").is_some()) => {
                &["containerPort", "protocol"]
            }
            "ports" => &["port", "protocol"],
            "finalizers" => return ListKind::Set,
            _ => return ListKind::Atomic,
        };
        ListKind::Map(keys.iter().map(|k| (*k).to_owned()).collect())
    }
}

/// The identity of a list item under `keys`: the values of the keys (a missing `protocol` is TCP).
pub(crate) fn item_key(item: &Value, keys: &[String]) -> Vec<Value> {
    keys.iter()
        .map(|k| match item.get(k) {
            Some(v) => v.clone(),
            None if k == "protocol" => Value::String("TCP".to_owned()),
            None => Value::Null,
        })
        .collect()
}
