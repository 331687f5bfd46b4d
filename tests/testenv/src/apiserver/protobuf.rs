//! Protobuf request bodies, as kubectl's typed commands send them (`kubectl create namespace`,
//! `serviceaccount`, `quota`, `configmap`, `secret`): client-go's built-in clientsets write
//! protobuf whatever discovery says and do not fall back to JSON on a 415, so a server must read
//! them, as the real one does. They are read here into the JSON the rest of the server speaks.
//!
//! The wire form is Kubernetes' protobuf envelope: the magic `k8s\0`, then a `runtime.Unknown`
//! holding the type (apiVersion, kind) and the object's own message. Only the kinds above are
//! read, with the fields those commands set (names and tags as in Kubernetes' `generated.proto`
//! files); other kinds get the 415 a server gives for a body it cannot read.

use std::collections::BTreeMap;

use prost::Message;
use serde_json::{json, Map, Value};

/// The first bytes of every Kubernetes protobuf body.
const MAGIC: &[u8] = b"k8s\0";

#[derive(Clone, PartialEq, Message)]
struct Unknown {
    #[prost(message, optional, tag = "1")]
    type_meta: Option<TypeMeta>,
    #[prost(bytes = "vec", optional, tag = "2")]
    raw: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, Message)]
struct TypeMeta {
    #[prost(string, optional, tag = "1")]
    api_version: Option<String>,
    #[prost(string, optional, tag = "2")]
    kind: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
struct ObjectMeta {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(string, optional, tag = "2")]
    generate_name: Option<String>,
    #[prost(string, optional, tag = "3")]
    namespace: Option<String>,
    #[prost(btree_map = "string, string", tag = "11")]
    labels: BTreeMap<String, String>,
    #[prost(btree_map = "string, string", tag = "12")]
    annotations: BTreeMap<String, String>,
}

#[derive(Clone, PartialEq, Message)]
struct Namespace {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
    #[prost(message, optional, tag = "2")]
    spec: Option<NamespaceSpec>,
}

#[derive(Clone, PartialEq, Message)]
struct NamespaceSpec {
    #[prost(string, repeated, tag = "1")]
    finalizers: Vec<String>,
}

#[derive(Clone, PartialEq, Message)]
struct ServiceAccount {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
    #[prost(message, repeated, tag = "3")]
    image_pull_secrets: Vec<LocalObjectReference>,
    #[prost(bool, optional, tag = "4")]
    automount_service_account_token: Option<bool>,
}

#[derive(Clone, PartialEq, Message)]
struct LocalObjectReference {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
struct ResourceQuota {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
    #[prost(message, optional, tag = "2")]
    spec: Option<ResourceQuotaSpec>,
}

#[derive(Clone, PartialEq, Message)]
struct ResourceQuotaSpec {
    #[prost(btree_map = "string, message", tag = "1")]
    hard: BTreeMap<String, Quantity>,
    #[prost(string, repeated, tag = "2")]
    scopes: Vec<String>,
}

#[derive(Clone, PartialEq, Message)]
struct Quantity {
    #[prost(string, optional, tag = "1")]
    string: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
struct ConfigMap {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
    #[prost(btree_map = "string, string", tag = "2")]
    data: BTreeMap<String, String>,
    #[prost(btree_map = "string, bytes", tag = "3")]
    binary_data: BTreeMap<String, Vec<u8>>,
    #[prost(bool, optional, tag = "4")]
    immutable: Option<bool>,
}

#[derive(Clone, PartialEq, Message)]
struct Secret {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
    #[prost(btree_map = "string, bytes", tag = "2")]
    data: BTreeMap<String, Vec<u8>>,
    #[prost(string, optional, tag = "3")]
    type_: Option<String>,
    #[prost(btree_map = "string, string", tag = "4")]
    string_data: BTreeMap<String, String>,
    #[prost(bool, optional, tag = "5")]
    immutable: Option<bool>,
}

/// Why a protobuf body cannot be read.
#[derive(Debug)]
pub(crate) enum Unreadable {
    /// Not a Kubernetes protobuf body, or a broken one.
    Malformed(String),
    /// A kind this server does not read from protobuf.
    Kind,
}

/// The JSON form of a protobuf body.
pub(crate) fn to_json(body: &[u8]) -> Result<Value, Unreadable> {
    let envelope = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| Unreadable::Malformed("the body does not start with k8s\\0".into()))?;
    let unknown = Unknown::decode(envelope).map_err(malformed)?;
    let type_meta = unknown.type_meta.unwrap_or_default();
    let api_version = type_meta.api_version.unwrap_or_default();
    let kind = type_meta.kind.unwrap_or_default();
    let raw = unknown.raw.unwrap_or_default();
    let mut object = Map::new();
    object.insert("apiVersion".into(), json!(api_version));
    object.insert("kind".into(), json!(kind));
    let metadata = match (api_version.as_str(), kind.as_str()) {
        ("v1", "Namespace") => {
            let ns = Namespace::decode(raw.as_slice()).map_err(malformed)?;
            if let Some(spec) = ns.spec.filter(|s| !s.finalizers.is_empty()) {
                object.insert("spec".into(), json!({"finalizers": spec.finalizers}));
            }
            ns.metadata
        }
        ("v1", "ServiceAccount") => {
            let sa = ServiceAccount::decode(raw.as_slice()).map_err(malformed)?;
            if !sa.image_pull_secrets.is_empty() {
                let names: Vec<Value> = sa
                    .image_pull_secrets
                    .into_iter()
                    .map(|r| json!({"name": r.name.unwrap_or_default()}))
                    .collect();
                object.insert("imagePullSecrets".into(), Value::Array(names));
            }
            if let Some(automount) = sa.automount_service_account_token {
                object.insert("automountServiceAccountToken".into(), json!(automount));
            }
            sa.metadata
        }
        ("v1", "ResourceQuota") => {
            let quota = ResourceQuota::decode(raw.as_slice()).map_err(malformed)?;
            let spec = quota.spec.unwrap_or_default();
            let hard: Map<String, Value> = spec
                .hard
                .into_iter()
                .map(|(k, q)| (k, json!(q.string.unwrap_or_default())))
                .collect();
            let mut json_spec = Map::new();
            json_spec.insert("hard".into(), Value::Object(hard));
            if !spec.scopes.is_empty() {
                json_spec.insert("scopes".into(), json!(spec.scopes));
            }
            object.insert("spec".into(), Value::Object(json_spec));
            quota.metadata
        }
        ("v1", "ConfigMap") => {
            let map = ConfigMap::decode(raw.as_slice()).map_err(malformed)?;
            if !map.data.is_empty() {
                object.insert("data".into(), json!(map.data));
            }
            if !map.binary_data.is_empty() {
                object.insert("binaryData".into(), base64_values(map.binary_data));
            }
            if let Some(immutable) = map.immutable {
                object.insert("immutable".into(), json!(immutable));
            }
            map.metadata
        }
        ("v1", "Secret") => {
            let secret = Secret::decode(raw.as_slice()).map_err(malformed)?;
            if !secret.data.is_empty() {
                object.insert("data".into(), base64_values(secret.data));
            }
            if !secret.string_data.is_empty() {
                object.insert("stringData".into(), json!(secret.string_data));
            }
            if let Some(type_) = secret.type_ {
                object.insert("type".into(), json!(type_));
            }
            if let Some(immutable) = secret.immutable {
                object.insert("immutable".into(), json!(immutable));
            }
            secret.metadata
        }
        _ => return Err(Unreadable::Kind),
    };
    object.insert(
        "metadata".into(),
        metadata_json(metadata.unwrap_or_default()),
    );
    Ok(Value::Object(object))
}

fn malformed(e: prost::DecodeError) -> Unreadable {
    Unreadable::Malformed(e.to_string())
}

fn metadata_json(meta: ObjectMeta) -> Value {
    let mut out = Map::new();
    for (key, value) in [
        ("name", meta.name),
        ("generateName", meta.generate_name),
        ("namespace", meta.namespace),
    ] {
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            out.insert(key.into(), json!(value));
        }
    }
    if !meta.labels.is_empty() {
        out.insert("labels".into(), json!(meta.labels));
    }
    if !meta.annotations.is_empty() {
        out.insert("annotations".into(), json!(meta.annotations));
    }
    Value::Object(out)
}

/// Bytes values as JSON carries them: base64.
fn base64_values(values: BTreeMap<String, Vec<u8>>) -> Value {
    Value::Object(
        values
            .into_iter()
            .map(|(k, v)| (k, json!(k8s_openapi::ByteString(v))))
            .collect(),
    )
}
