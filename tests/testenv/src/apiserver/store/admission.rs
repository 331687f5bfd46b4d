//! The admission plugins the real API server runs on pod create: ServiceAccount (the pod's
//! account must exist) and ResourceQuota (the namespace's quotas must hold the pod), with the
//! quotas' `status.used` kept current.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::{meta_str, Store};
use crate::apiserver::{
    error::{ApiError, ApiResult},
    quantity::{self, Milli},
    resources::GroupResource,
};

/// The quota resources counted for pods; the others a quota may list are not enforced here.
const POD_RESOURCES: [&str; 7] = [
    "pods",
    "cpu",
    "memory",
    "requests.cpu",
    "requests.memory",
    "limits.cpu",
    "limits.memory",
];

/// The resources every container must request or limit when a quota names them: all but `pods`.
const CONTAINER_RESOURCES: &[&str] = POD_RESOURCES.split_at(1).1;

/// Amounts of quota resources by name.
type Usage = BTreeMap<String, Milli>;

fn core(plural: &str) -> GroupResource {
    GroupResource {
        group: String::new(),
        plural: plural.to_owned(),
    }
}

/// Whether a pod still counts against quotas: it has not succeeded or failed.
fn counted(pod: &Value) -> bool {
    !matches!(
        pod.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded" | "Failed")
    )
}

/// One container's amounts of `cpu` or `memory`, from `requests` and `limits`; a request left
/// out defaults to the limit, as the API server's defaulting does.
fn container_amounts(container: &Value, resource: &str) -> (Option<Milli>, Option<Milli>) {
    let amount = |kind: &str| {
        container
            .pointer(&format!("/resources/{kind}/{resource}"))
            .and_then(|q| match q {
                Value::String(text) => quantity::parse(text),
                Value::Number(n) => n.as_f64().map(|f| (f * 1000.0).ceil() as Milli),
                _ => None,
            })
    };
    let limit = amount("limits");
    (amount("requests").or(limit), limit)
}

fn containers<'a>(pod: &'a Value, list: &str) -> impl Iterator<Item = &'a Value> {
    pod.pointer(&format!("/spec/{list}"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

/// What one pod uses: `pods` and, for what its containers set, the sum of the containers'
/// requests and limits, or the largest init container's when that is more.
fn pod_usage(pod: &Value) -> Usage {
    let mut usage = Usage::from([("pods".to_owned(), 1000)]);
    for resource in ["cpu", "memory"] {
        let mut sums = [None::<Milli>; 2];
        let mut init = [None::<Milli>; 2];
        for container in containers(pod, "containers") {
            let (request, limit) = container_amounts(container, resource);
            for (total, amount) in sums.iter_mut().zip([request, limit]) {
                if let Some(amount) = amount {
                    *total = Some(total.unwrap_or(0) + amount);
                }
            }
        }
        for container in containers(pod, "initContainers") {
            let (request, limit) = container_amounts(container, resource);
            for (largest, amount) in init.iter_mut().zip([request, limit]) {
                if let Some(amount) = amount {
                    *largest = Some(largest.unwrap_or(0).max(amount));
                }
            }
        }
        let [request, limit] = [0, 1].map(|i| match (sums[i], init[i]) {
            (Some(sum), Some(init)) => Some(sum.max(init)),
            (sum, init) => sum.or(init),
        });
        if let Some(request) = request {
            usage.insert(resource.to_owned(), request);
            usage.insert(format!("requests.{resource}"), request);
        }
        if let Some(limit) = limit {
            usage.insert(format!("limits.{resource}"), limit);
        }
    }
    usage
}

/// The quota resources a container sets.
fn container_resources(container: &Value) -> Vec<String> {
    let mut set = Vec::new();
    for resource in ["cpu", "memory"] {
        let (request, limit) = container_amounts(container, resource);
        if request.is_some() {
            set.push(resource.to_owned());
            set.push(format!("requests.{resource}"));
        }
        if limit.is_some() {
            set.push(format!("limits.{resource}"));
        }
    }
    set
}

/// The `spec.hard` of a quota, for the resources enforced here.
fn hard(quota: &Value) -> Usage {
    quota
        .pointer("/spec/hard")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter(|(name, _)| POD_RESOURCES.contains(&name.as_str()))
        .filter_map(|(name, amount)| {
            let amount = match amount {
                Value::String(text) => quantity::parse(text),
                Value::Number(n) => n.as_i64().map(|n| Milli::from(n) * 1000),
                _ => None,
            }?;
            Some((name.clone(), amount))
        })
        .collect()
}

/// `limits.cpu=2,pods=1`: the amounts of `names`, sorted by name.
fn listed(amounts: &Usage, names: &[String]) -> String {
    names
        .iter()
        .map(|name| {
            format!(
                "{name}={}",
                quantity::format(amounts.get(name).copied().unwrap_or(0))
            )
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Why a quota refuses a pod, in the ResourceQuota plugin's words; `None` when it holds it.
fn refusal(quota_name: &str, hard: &Usage, used: &Usage, pod: &Value) -> Option<String> {
    let required: Vec<&str> = CONTAINER_RESOURCES
        .iter()
        .copied()
        .filter(|r| hard.contains_key(*r))
        .collect();
    let mut missing: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for container in containers(pod, "containers").chain(containers(pod, "initContainers")) {
        let set = container_resources(container);
        let name = container
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        for resource in required.iter().filter(|r| !set.iter().any(|s| s == *r)) {
            missing.entry(resource).or_default().push(name.to_owned());
        }
    }
    if !missing.is_empty() {
        let parts: Vec<String> = missing
            .into_iter()
            .map(|(resource, mut names)| {
                names.sort();
                names.dedup();
                format!("{resource} for: {}", names.join(","))
            })
            .collect();
        return Some(format!(
            "failed quota: {quota_name}: must specify {}",
            parts.join("; ")
        ));
    }
    let requested = pod_usage(pod);
    let exceeded: Vec<String> = requested
        .iter()
        .filter_map(|(name, amount)| {
            let limit = hard.get(name)?;
            (used.get(name).copied().unwrap_or(0) + amount > *limit).then(|| name.clone())
        })
        .collect();
    if exceeded.is_empty() {
        return None;
    }
    Some(format!(
        "exceeded quota: {quota_name}, requested: {}, used: {}, limited: {}",
        listed(&requested, &exceeded),
        listed(used, &exceeded),
        listed(hard, &exceeded),
    ))
}

impl Store {
    /// The ServiceAccount and ResourceQuota admission of a new pod named `name`.
    pub(super) fn admit_pod(&self, namespace: &str, name: &str, pod: &Value) -> ApiResult<()> {
        let account = pod
            .pointer("/spec/serviceAccountName")
            .and_then(Value::as_str)
            .filter(|a| !a.is_empty())
            .unwrap_or("default");
        if self
            .stored(&core("serviceaccounts"), namespace, account)
            .is_none()
        {
            return Err(ApiError::forbidden(
                "pods",
                name,
                &format!(
                    "error looking up service account {namespace}/{account}: serviceaccount \"{account}\" not found"
                ),
            ));
        }
        let used = self.pod_usage_in(namespace);
        for (quota_name, quota) in self.quotas_in(namespace) {
            let hard = hard(&quota);
            if let Some(message) = refusal(&quota_name, &hard, &used, pod) {
                return Err(ApiError::forbidden("pods", name, &message));
            }
        }
        Ok(())
    }

    fn quotas_in(&self, namespace: &str) -> Vec<(String, Value)> {
        self.objects
            .get(&core("resourcequotas"))
            .into_iter()
            .flat_map(|bucket| bucket.iter())
            .filter(|((ns, _), _)| ns == namespace)
            .map(|((_, name), stored)| (name.clone(), stored.object.clone()))
            .collect()
    }

    /// What the counted pods of a namespace use together.
    fn pod_usage_in(&self, namespace: &str) -> Usage {
        let mut total = Usage::new();
        let pods = self
            .objects
            .get(&core("pods"))
            .into_iter()
            .flat_map(|bucket| bucket.iter())
            .filter(|((ns, _), stored)| ns == namespace && counted(&stored.object));
        for (_, stored) in pods {
            for (name, amount) in pod_usage(&stored.object) {
                *total.entry(name).or_default() += amount;
            }
        }
        total
    }

    /// Brings the `status` (`hard` and `used`) of a namespace's quotas up to date, as the quota
    /// controller does, writing only the quotas whose status changes.
    pub(super) fn refresh_quotas(&mut self, namespace: &str) {
        let used = self.pod_usage_in(namespace);
        let key = core("resourcequotas");
        for (name, quota) in self.quotas_in(namespace) {
            if meta_str(&quota, "deletionTimestamp").is_some() {
                continue;
            }
            let hard = hard(&quota);
            let spec_hard = quota
                .pointer("/spec/hard")
                .cloned()
                .unwrap_or_else(|| json!({}));
            let used: Map<String, Value> = hard
                .keys()
                .map(|resource| {
                    let amount = used.get(resource).copied().unwrap_or(0);
                    (resource.clone(), Value::String(quantity::format(amount)))
                })
                .collect();
            let status = json!({"hard": spec_hard, "used": used});
            if quota.get("status") == Some(&status) {
                continue;
            }
            let mut updated = quota.clone();
            updated["status"] = status;
            self.rewrite(&key, namespace, &name, &mut updated, Some(quota));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(containers: Value) -> Value {
        json!({"spec": {"containers": containers}})
    }

    #[test]
    fn usage_sums_containers_and_defaults_requests_to_limits() {
        let usage = pod_usage(&pod(json!([
            {"name": "a", "resources": {"requests": {"cpu": "250m"}, "limits": {"cpu": "1"}}},
            {"name": "b", "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}}},
        ])));
        assert_eq!(usage["pods"], 1000);
        assert_eq!(usage["requests.cpu"], 750);
        assert_eq!(usage["cpu"], 750);
        assert_eq!(usage["limits.cpu"], 1500);
        assert_eq!(usage["requests.memory"], 64 * (1000 << 20));
    }

    #[test]
    fn refusals_name_the_exceeded_or_missing_resources() {
        let hard = Usage::from([("pods".to_owned(), 2000)]);
        let used = Usage::from([("pods".to_owned(), 2000)]);
        assert_eq!(
            refusal("q", &hard, &used, &pod(json!([{"name": "a"}]))).as_deref(),
            Some("exceeded quota: q, requested: pods=1, used: pods=2, limited: pods=2")
        );
        let hard = Usage::from([
            ("requests.cpu".to_owned(), 1000),
            ("limits.memory".to_owned(), 1000),
        ]);
        assert_eq!(
            refusal(
                "q",
                &hard,
                &Usage::new(),
                &pod(json!([{"name": "b"}, {"name": "a"}]))
            )
            .as_deref(),
            Some("failed quota: q: must specify limits.memory for: a,b; requests.cpu for: a,b")
        );
    }
}
