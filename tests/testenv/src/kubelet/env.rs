//! A container's environment: literal values, `valueFrom`, `envFrom`, `$(VAR)` expansion, and
//! the kubelet's stand-in for cluster DNS.
//!
//! There is no cluster DNS on the host, so a host name of the form `<service>.<namespace>.svc`
//! or `<service>.<namespace>.svc.cluster.local` (optionally followed by `:port`, inside any
//! text such as `http://<host>:8080/path`) in an environment value or an argument is replaced
//! by the IP of a pod the Service selects. Pod IPs are derived from pod names, so the address
//! stays right when that pod is re-created. Until a selected pod has an IP the container waits
//! in `ContainerCreating`.

use std::{collections::BTreeMap, net::Ipv4Addr};

use k8s_openapi::api::core::v1::{
    ConfigMap, Container, EnvFromSource, EnvVarSource, Pod, Secret, Service,
};
use kube::{
    api::{Api, ListParams},
    Client,
};

use super::command::expand;

/// Why a container's environment cannot be built yet. Both are retried.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvError {
    /// A referenced Secret, ConfigMap or key is missing, or the spec asks for something the
    /// process kubelet cannot provide: `CreateContainerConfigError`.
    #[error("{0}")]
    Config(String),
    /// A `<service>.<namespace>.svc` name has no pod to point at yet: `ContainerCreating`.
    #[error("{0}")]
    ServicePending(String),
}

/// Facts about the pod that `fieldRef` can read.
#[derive(Debug, Clone)]
pub struct PodFacts {
    pub pod_ip: Ipv4Addr,
    pub host_ip: Ipv4Addr,
    pub node_name: String,
}

/// Builds a container's environment in Kubernetes' order: `envFrom` sources, then `env` entries
/// (each `value` expanded against the entries before it). Service host names are not rewritten
/// here; see [`rewrite_service_hosts`].
pub async fn resolve_env(
    client: &Client,
    pod: &Pod,
    facts: &PodFacts,
    container: &Container,
) -> Result<Vec<(String, String)>, EnvError> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut env: Vec<(String, String)> = Vec::new();
    for source in container.env_from.iter().flatten() {
        env.extend(env_from(client, namespace, source).await?);
    }
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (_, Some(source)) => match value_from(client, pod, facts, namespace, source).await? {
                Some(value) => value,
                None => continue,
            },
            (Some(value), None) => expand(value, &env),
            (None, None) => String::new(),
        };
        env.push((var.name.clone(), value));
    }
    Ok(env)
}

async fn env_from(
    client: &Client,
    namespace: &str,
    source: &EnvFromSource,
) -> Result<Vec<(String, String)>, EnvError> {
    let prefix = source.prefix.as_deref().unwrap_or_default();
    let data = if let Some(reference) = &source.config_map_ref {
        let optional = reference.optional.unwrap_or(false);
        match config_map_data(client, namespace, &reference.name).await? {
            Some(data) => data,
            None if optional => BTreeMap::new(),
            None => return Err(not_found("configmap", &reference.name)),
        }
    } else if let Some(reference) = &source.secret_ref {
        let optional = reference.optional.unwrap_or(false);
        match secret_data(client, namespace, &reference.name).await? {
            Some(data) => data,
            None if optional => BTreeMap::new(),
            None => return Err(not_found("secret", &reference.name)),
        }
    } else {
        BTreeMap::new()
    };
    Ok(data
        .into_iter()
        .map(|(key, value)| (format!("{prefix}{key}"), value))
        .collect())
}

/// The value of a `valueFrom` entry, or `None` for an optional reference that is missing.
async fn value_from(
    client: &Client,
    pod: &Pod,
    facts: &PodFacts,
    namespace: &str,
    source: &EnvVarSource,
) -> Result<Option<String>, EnvError> {
    if let Some(field) = &source.field_ref {
        return field_value(pod, facts, &field.field_path).map(Some);
    }
    if let Some(selector) = &source.secret_key_ref {
        let optional = selector.optional.unwrap_or(false);
        let data = secret_data(client, namespace, &selector.name).await?;
        return lookup_key(
            data,
            "Secret",
            namespace,
            &selector.name,
            &selector.key,
            optional,
        );
    }
    if let Some(selector) = &source.config_map_key_ref {
        let optional = selector.optional.unwrap_or(false);
        let data = config_map_data(client, namespace, &selector.name).await?;
        return lookup_key(
            data,
            "ConfigMap",
            namespace,
            &selector.name,
            &selector.key,
            optional,
        );
    }
    Err(EnvError::Config(
        "only fieldRef, secretKeyRef and configMapKeyRef are supported by the process kubelet"
            .to_owned(),
    ))
}

fn lookup_key(
    data: Option<BTreeMap<String, String>>,
    kind: &str,
    namespace: &str,
    name: &str,
    key: &str,
    optional: bool,
) -> Result<Option<String>, EnvError> {
    match data {
        None if optional => Ok(None),
        None => Err(not_found(&kind.to_lowercase(), name)),
        Some(mut data) => match data.remove(key) {
            Some(value) => Ok(Some(value)),
            None if optional => Ok(None),
            None => Err(EnvError::Config(format!(
                "couldn't find key {key} in {kind} {namespace}/{name}"
            ))),
        },
    }
}

fn not_found(kind: &str, name: &str) -> EnvError {
    EnvError::Config(format!("{kind} \"{name}\" not found"))
}

/// The downward API fields a `fieldRef` may name.
pub fn field_value(pod: &Pod, facts: &PodFacts, path: &str) -> Result<String, EnvError> {
    let meta = &pod.metadata;
    let label = |map: &Option<BTreeMap<String, String>>, prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix("']"))
            .map(|key| {
                map.as_ref()
                    .and_then(|map| map.get(key))
                    .cloned()
                    .unwrap_or_default()
            })
    };
    let value = match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => facts.node_name.clone(),
        "spec.serviceAccountName" => pod
            .spec
            .as_ref()
            .and_then(|spec| spec.service_account_name.clone())
            .unwrap_or_default(),
        "status.podIP" | "status.podIPs" => facts.pod_ip.to_string(),
        "status.hostIP" | "status.hostIPs" => facts.host_ip.to_string(),
        _ => label(&meta.labels, "metadata.labels['")
            .or_else(|| label(&meta.annotations, "metadata.annotations['"))
            .ok_or_else(|| EnvError::Config(format!("unsupported fieldRef fieldPath {path:?}")))?,
    };
    Ok(value)
}

async fn secret_data(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<Option<BTreeMap<String, String>>, EnvError> {
    let secret = Api::<Secret>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .map_err(|err| EnvError::Config(format!("reading secret \"{name}\": {err}")))?;
    Ok(secret.map(|secret| {
        let mut data: BTreeMap<String, String> = secret.string_data.unwrap_or_default();
        for (key, bytes) in secret.data.unwrap_or_default() {
            data.insert(key, String::from_utf8_lossy(&bytes.0).into_owned());
        }
        data
    }))
}

async fn config_map_data(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<Option<BTreeMap<String, String>>, EnvError> {
    let config_map = Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .map_err(|err| EnvError::Config(format!("reading configmap \"{name}\": {err}")))?;
    Ok(config_map.map(|config_map| config_map.data.unwrap_or_default()))
}

/// A `<service>.<namespace>.svc[.cluster.local]` host name found in a text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRef {
    /// Byte range of the host name in the text (without any port).
    pub range: std::ops::Range<usize>,
    pub namespace: String,
    pub name: String,
}

/// Finds the Service host names in `text`.
pub fn service_refs(text: &str) -> Vec<ServiceRef> {
    let is_host_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '.';
    let mut refs = Vec::new();
    let mut start = None;
    for (index, c) in text.char_indices().chain([(text.len(), ' ')]) {
        match (start, is_host_char(c)) {
            (None, true) => start = Some(index),
            (Some(begin), false) => {
                if let Some(found) = parse_service_host(&text[begin..index], begin) {
                    refs.push(found);
                }
                start = None;
            }
            _ => {}
        }
    }
    refs
}

fn parse_service_host(token: &str, offset: usize) -> Option<ServiceRef> {
    let host = token.strip_suffix('.').unwrap_or(token);
    let stem = host
        .strip_suffix(".svc.cluster.local")
        .or_else(|| host.strip_suffix(".svc"))?;
    let (name, namespace) = stem.split_once('.')?;
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    (label_ok(name) && label_ok(namespace)).then(|| ServiceRef {
        range: offset..offset + host.len(),
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    })
}

/// Replaces every Service host name in `texts` by the IP of a pod that Service selects.
pub async fn rewrite_service_hosts(
    client: &Client,
    texts: &mut [&mut String],
) -> Result<(), EnvError> {
    let mut resolved: BTreeMap<(String, String), String> = BTreeMap::new();
    for text in texts.iter_mut() {
        let refs = service_refs(text);
        for found in refs.into_iter().rev() {
            let key = (found.namespace.clone(), found.name.clone());
            let address = match resolved.get(&key) {
                Some(address) => address.clone(),
                None => {
                    let address = service_address(client, &found.namespace, &found.name).await?;
                    resolved.insert(key, address.clone());
                    address
                }
            };
            text.replace_range(found.range, &address);
        }
    }
    Ok(())
}

/// What a Service name resolves to: an `ExternalName`'s target, or the IP of a pod it selects
/// (ready pods first, then by name, so every reader picks the same one).
async fn service_address(client: &Client, namespace: &str, name: &str) -> Result<String, EnvError> {
    let pending = |why: &str| {
        EnvError::ServicePending(format!(
            "resolving {name}.{namespace}.svc: {why} (the process kubelet resolves Service \
             names to the IP of a selected pod)"
        ))
    };
    let service = Api::<Service>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .map_err(|err| pending(&format!("reading the Service: {err}")))?
        .ok_or_else(|| pending("the Service does not exist"))?;
    let spec = service.spec.unwrap_or_default();
    if spec.type_.as_deref() == Some("ExternalName") {
        return spec
            .external_name
            .ok_or_else(|| pending("the ExternalName Service has no externalName"));
    }
    let selector = spec
        .selector
        .filter(|selector| !selector.is_empty())
        .ok_or_else(|| pending("the Service has no selector"))?;
    let selector = selector
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join(",");
    let pods = Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|err| pending(&format!("listing its pods: {err}")))?;
    pods.items
        .iter()
        .filter(|pod| pod.metadata.deletion_timestamp.is_none())
        .filter_map(|pod| {
            let status = pod.status.as_ref()?;
            if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
                return None;
            }
            let ip = status.pod_ip.clone()?;
            let ready = status
                .conditions
                .iter()
                .flatten()
                .any(|condition| condition.type_ == "Ready" && condition.status == "True");
            Some((!ready, pod.metadata.name.clone().unwrap_or_default(), ip))
        })
        .min()
        .map(|(_, _, ip)| ip)
        .ok_or_else(|| pending("no pod selected by the Service has an IP yet"))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    #[test]
    fn service_hosts_are_found_in_any_text() {
        let text = "demo-head.default.svc:7400";
        assert_eq!(
            service_refs(text),
            vec![ServiceRef {
                range: 0..21,
                namespace: "default".into(),
                name: "demo-head".into()
            }]
        );
        let text = "http://web.team-a.svc.cluster.local:8080/x,db.ns.svc. other.example.svc.com";
        let refs = service_refs(text);
        assert_eq!(refs.len(), 2, "{refs:?}");
        assert_eq!(&text[refs[0].range.clone()], "web.team-a.svc.cluster.local");
        assert_eq!(&text[refs[1].range.clone()], "db.ns.svc");
        assert_eq!(
            (refs[1].name.as_str(), refs[1].namespace.as_str()),
            ("db", "ns")
        );
        for text in [
            "svc",
            "a.svc",
            "a.b.c.svc",
            "A.b.svc",
            "-a.b.svc",
            "a.b.svcx",
            "x.y.svc.cluster",
        ] {
            assert_eq!(service_refs(text), vec![], "{text}");
        }
    }

    #[test]
    fn field_refs_read_the_pod() {
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                namespace: Some("ns".into()),
                uid: Some("u-1".into()),
                labels: Some(BTreeMap::from([("app".into(), "web".into())])),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        };
        let facts = PodFacts {
            pod_ip: Ipv4Addr::new(127, 1, 2, 3),
            host_ip: Ipv4Addr::LOCALHOST,
            node_name: "local".into(),
        };
        let get = |path| field_value(&pod, &facts, path);
        assert_eq!(get("metadata.name"), Ok("p".into()));
        assert_eq!(get("metadata.namespace"), Ok("ns".into()));
        assert_eq!(get("metadata.uid"), Ok("u-1".into()));
        assert_eq!(get("status.podIP"), Ok("127.1.2.3".into()));
        assert_eq!(get("status.hostIP"), Ok("127.0.0.1".into()));
        assert_eq!(get("spec.nodeName"), Ok("local".into()));
        assert_eq!(get("metadata.labels['app']"), Ok("web".into()));
        assert_eq!(get("metadata.annotations['none']"), Ok(String::new()));
        assert!(matches!(get("spec.hostname"), Err(EnvError::Config(_))));
    }

    #[test]
    fn missing_keys_are_config_errors_unless_optional() {
        let data = || Some(BTreeMap::from([("k".to_owned(), "v".to_owned())]));
        assert_eq!(
            lookup_key(data(), "Secret", "ns", "s", "k", false),
            Ok(Some("v".into()))
        );
        assert_eq!(lookup_key(data(), "Secret", "ns", "s", "x", true), Ok(None));
        assert_eq!(lookup_key(None, "Secret", "ns", "s", "x", true), Ok(None));
        assert_eq!(
            lookup_key(data(), "Secret", "ns", "s", "x", false),
            Err(EnvError::Config(
                "couldn't find key x in Secret ns/s".into()
            ))
        );
        assert_eq!(
            lookup_key(None, "Secret", "ns", "s", "x", false),
            Err(EnvError::Config("secret \"s\" not found".into()))
        );
    }
}
