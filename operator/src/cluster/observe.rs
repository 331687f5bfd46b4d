//! Reads what exists of a `ComputeCluster` in one step: its token Secret, its head Service, the
//! pods it owns, and what its head says about its workers. Writes nothing.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use kube::{api::ListParams, Api, Client, ResourceExt};

use super::pods;
use crate::{
    contract::TOKEN_SECRET_KEY,
    crd::ComputeCluster,
    head::{Head, HeadView},
    names::{cluster_selector, head_pod_name, head_service_name, token_secret_name},
    Error,
};

/// What the cluster's token Secret holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenSecret {
    /// There is no Secret yet; the operator makes one.
    Missing,
    /// The cluster's token.
    Token(String),
    /// The Secret belongs to an earlier cluster of the same name and is about to be garbage
    /// collected: its token must not reach the new cluster's pods.
    Foreign,
    /// The Secret has no usable token.
    Empty,
}

/// Everything one reconcile knows about what exists.
#[derive(Clone, Debug)]
pub struct Observed {
    /// The token Secret.
    pub secret: TokenSecret,
    /// Whether the head Service exists.
    pub service_exists: bool,
    /// The head Service as it is.
    pub service: Option<Service>,
    /// The pods the cluster owns.
    pub pods: Vec<Pod>,
    /// The IP of a head pod that runs (ready or not: a head failing its probe may still
    /// schedule); `None` when there is none, or it is going or gone.
    pub head_ip: Option<String>,
    /// The head's view of its workers by pod name; `None` when the head could not be asked.
    pub head_workers: Option<HashMap<String, HeadView>>,
}

impl Observed {
    /// The cluster token, when the Secret holds one.
    pub fn token(&self) -> Option<&str> {
        match &self.secret {
            TokenSecret::Token(token) => Some(token),
            TokenSecret::Missing | TokenSecret::Foreign | TokenSecret::Empty => None,
        }
    }

    /// Fails when the Secret exists but the operator cannot use it: the reconcile waits for
    /// someone (or the garbage collector) to delete it.
    pub fn check_secret(&self, cluster: &str) -> Result<(), Error> {
        match &self.secret {
            TokenSecret::Missing | TokenSecret::Token(_) => Ok(()),
            TokenSecret::Foreign => Err(Error::ForeignSecret {
                name: token_secret_name(cluster),
            }),
            TokenSecret::Empty => Err(Error::BadSecret {
                name: token_secret_name(cluster),
            }),
        }
    }
}

/// Reads what exists of `cluster`. Fails only when the API server cannot be read; a head that
/// does not answer leaves [`Observed::head_workers`] empty.
pub async fn observe(client: &Client, cluster: &ComputeCluster) -> Result<Observed, Error> {
    let name = cluster.name_any();
    let namespace = cluster.namespace().unwrap_or_default();
    let uid = cluster.uid();

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let secret = match secrets.get_opt(&token_secret_name(&name)).await? {
        None => TokenSecret::Missing,
        Some(secret) => read_token(&secret, uid.as_deref()),
    };

    let services: Api<Service> = Api::namespaced(client.clone(), &namespace);
    let service = services.get_opt(&head_service_name(&name)).await?;
    let service_exists = service.is_some();

    let pod_api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let pods: Vec<Pod> = pod_api
        .list(&ListParams::default().labels(&cluster_selector(&name)))
        .await?
        .items
        .into_iter()
        .filter(|p| {
            p.owner_references()
                .iter()
                .any(|o| Some(&o.uid) == uid.as_ref())
        })
        .collect();

    let head_name = head_pod_name(&name);
    let head_ip = pods
        .iter()
        .find(|p| pods::name(p) == head_name)
        .filter(|p| !pods::is_terminating(p) && !pods::is_finished(p))
        .and_then(|p| p.status.as_ref()?.pod_ip.clone());
    let head_workers = match (&head_ip, &secret) {
        (Some(ip), TokenSecret::Token(token)) => ask_head(ip, token).await,
        _ => None,
    };

    Ok(Observed {
        secret,
        service_exists,
        service,
        pods,
        head_ip,
        head_workers,
    })
}

/// The token in `secret`, unless the Secret is another object's.
fn read_token(secret: &Secret, cluster_uid: Option<&str>) -> TokenSecret {
    let controller = secret
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true));
    if controller.is_some_and(|o| Some(o.uid.as_str()) != cluster_uid) {
        return TokenSecret::Foreign;
    }
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(TOKEN_SECRET_KEY))
        .and_then(|t| String::from_utf8(t.0.clone()).ok())
        .filter(|t| !t.is_empty())
        .map_or(TokenSecret::Empty, TokenSecret::Token)
}

/// The head's workers; `None` when the head cannot be asked (it is starting, or restarting).
async fn ask_head(ip: &str, token: &str) -> Option<HashMap<String, HeadView>> {
    let answer = match Head::connect(ip, token).await {
        Ok(mut head) => head.workers().await,
        Err(e) => Err(e),
    };
    answer
        .inspect_err(|e| tracing::debug!(ip, error = %e, "cannot ask the head about its workers"))
        .ok()
}
