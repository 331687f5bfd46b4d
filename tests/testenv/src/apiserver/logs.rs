//! `GET pods/{name}/log`: the API server checks the pod and its container, then proxies the
//! request to the kubelet of the pod's node (the Node's first `InternalIP` and its
//! `daemonEndpoints.kubeletEndpoint.Port`), as the real one does; `follow` streams through.

use std::sync::Arc;

use axum::{
    body::Body,
    http::{StatusCode, Uri},
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use serde_json::Value;

use super::{error::ApiError, Shared};

/// The container's name: the one asked for, or the pod's only one.
fn container_of(pod: &Value, name: &str, asked: Option<&str>) -> Result<String, ApiError> {
    let containers: Vec<&str> = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(
            pod["spec"]["initContainers"]
                .as_array()
                .into_iter()
                .flatten(),
        )
        .filter_map(|c| c["name"].as_str())
        .collect();
    match asked {
        Some(asked) if containers.contains(&asked) => Ok(asked.to_owned()),
        Some(asked) => Err(ApiError::bad_request(format!(
            "container {asked} is not valid for pod {name}"
        ))),
        None if containers.len() == 1 => Ok(containers[0].to_owned()),
        None => Err(ApiError::bad_request(format!(
            "a container name must be specified for pod {name}, choose one of: [{}]",
            containers.join(" ")
        ))),
    }
}

/// Where the kubelet of `node` serves: `address:port`.
fn kubelet_of(node: &Value) -> Option<String> {
    let address = node["status"]["addresses"]
        .as_array()?
        .iter()
        .find(|a| a["type"] == "InternalIP")?["address"]
        .as_str()?;
    let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"].as_u64()?;
    (port != 0).then(|| format!("{address}:{port}"))
}

/// Answers `GET /api/v1/namespaces/{namespace}/pods/{name}/log?{query}`.
pub(crate) async fn pod_log(
    shared: Arc<Shared>,
    namespace: &str,
    name: &str,
    query: Option<&str>,
) -> Response {
    match proxy(&shared, namespace, name, query).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn proxy(
    shared: &Shared,
    namespace: &str,
    name: &str,
    query: Option<&str>,
) -> Result<Response, ApiError> {
    let params: Vec<(String, String)> = query
        .map(|q| {
            url_pairs(q)
                .filter(|(k, _)| k != "container")
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let asked = query.and_then(|q| url_pairs(q).find(|(k, _)| k == "container").map(|(_, v)| v));
    let (pod, node) = {
        let store = shared.lock();
        let pods = store
            .registry
            .get("", "v1", "pods")
            .cloned()
            .ok_or_else(ApiError::not_found_path)?;
        let pod = store.get(&pods, namespace, name)?;
        let node = match pod["spec"]["nodeName"].as_str() {
            Some(node) => {
                let nodes = store
                    .registry
                    .get("", "v1", "nodes")
                    .cloned()
                    .ok_or_else(ApiError::not_found_path)?;
                store.get(&nodes, "", node).ok()
            }
            None => None,
        };
        (pod, node)
    };
    let container = container_of(&pod, name, asked.as_deref())?;
    let Some(kubelet) = node.as_ref().and_then(kubelet_of) else {
        return Err(ApiError::bad_request(format!(
            "container \"{container}\" in pod \"{name}\" is waiting to start: ContainerCreating"
        )));
    };
    let query: String = params
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let uri: Uri = format!("http://{kubelet}/containerLogs/{namespace}/{name}/{container}?{query}")
        .parse()
        .map_err(|e| ApiError::internal(format!("kubelet address: {e}")))?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let answer = client
        .get(uri)
        .await
        .map_err(|e| ApiError::internal(format!("cannot reach the kubelet at {kubelet}: {e}")))?;
    let status = answer.status();
    if status == StatusCode::OK {
        let mut response = Response::new(Body::new(answer.into_body()));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain"),
        );
        return Ok(response);
    }
    let body = http_body_util::BodyExt::collect(answer.into_body())
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
        .unwrap_or_default();
    Err(ApiError::bad_request(body))
}

/// `key=value` pairs of a query string, percent-decoded.
fn url_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k.to_owned(), v.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_container_is_named_or_the_only_one() {
        let one = json!({"spec": {"containers": [{"name": "main"}]}});
        assert_eq!(container_of(&one, "p", None).unwrap(), "main");
        assert!(container_of(&one, "p", Some("other")).is_err());
        let two = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}]}});
        let error = container_of(&two, "p", None).unwrap_err();
        assert!(error.to_status()["message"]
            .as_str()
            .unwrap()
            .contains("choose one of: [a b]"));
    }

    #[test]
    fn the_kubelet_is_found_through_its_node() {
        let node = json!({"status": {
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}}
        }});
        assert_eq!(kubelet_of(&node).as_deref(), Some("127.0.0.1:10250"));
        assert_eq!(kubelet_of(&json!({})), None);
    }
}
