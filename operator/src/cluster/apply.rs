//! Carries out one [`Plan`] and says what it applied: creates the token Secret, applies the head
//! Service, creates and deletes pods, marks workers draining, starts the drains of marked
//! workers, and records an Event for each change.
//!
//! Writes go under the `flotilla-operator` field manager: the Service by server-side apply, the
//! Secret and pods by create (a token is never rewritten, and pods are immutable), the drain
//! mark by a merge patch. The first write the API server refuses ends the step, and the
//! [`Refusal`] is part of the answer ([`Applied::refusal`]) so the status can show it.

use std::sync::Arc;

use k8s_openapi::{
    api::core::v1::{ObjectReference, Pod, Secret, Service},
    jiff::Timestamp,
};
use kube::{
    api::{Patch, PatchParams, PostParams},
    runtime::events::EventType,
    Api, ResourceExt,
};
use rand::Rng;

use super::{
    desired::{token_secret, Desired},
    drain::{delete_pod, DrainJob, HeadAccess},
    observe::Observed,
    plan::{DeleteReason, Plan},
    validate::ValidatedCluster,
};
use crate::{
    context::Context,
    contract::{ANNOTATION_DRAINING, MANAGER_NAME},
    head::Head,
    names::{head_service_name, token_secret_name},
    Error, Refusal,
};

/// What one step changed, and where it stopped.
#[derive(Debug, Default)]
pub struct Applied {
    /// Pods created, by name.
    pub created: Vec<String>,
    /// Pods deleted, with the reason.
    pub deleted: Vec<(String, DeleteReason)>,
    /// Workers marked draining, with the reason.
    pub marked: Vec<(String, DeleteReason)>,
    /// Draining workers taken back at the head, by name.
    pub undrained: Vec<String>,
    /// The write that was refused, which ended the step there.
    pub refusal: Option<Refusal>,
}

/// Why a step ended before its last write.
enum Stop {
    /// The write was refused; the status says so.
    Refused(Refusal),
    /// The API server could not be reached; the next reconcile tries again.
    Failed(Error),
}

/// How a failed write of `kind` `name` ends the step.
fn stop(kind: &'static str, name: &str, error: kube::Error) -> Stop {
    match error {
        kube::Error::Api(status) => Stop::Refused(Refusal::Rejected {
            kind,
            name: name.to_owned(),
            status,
        }),
        other => Stop::Failed(other.into()),
    }
}

/// Carries out `step` for `cluster`. Fails only when the API server cannot be reached; a refused
/// write is in the answer.
pub async fn apply(
    ctx: &Arc<Context>,
    cluster: &ValidatedCluster,
    desired: &Desired,
    observed: &Observed,
    step: &Plan,
) -> Result<Applied, Error> {
    let writer = Writer {
        ctx,
        cluster,
        regarding: cluster.reference(),
    };
    let mut applied = Applied::default();
    let mut token = observed.token().map(str::to_owned);
    match writer.write(desired, step, &mut token, &mut applied).await {
        Ok(()) => {}
        Err(Stop::Refused(refusal)) => applied.refusal = Some(refusal),
        Err(Stop::Failed(error)) => return Err(error),
    }
    let head = match (&observed.head_ip, token) {
        (Some(ip), Some(token)) => Some(HeadAccess {
            ip: ip.clone(),
            token,
        }),
        (None, _) => None,
        // A head runs but there is no token to ask it with (its Secret could not be created):
        // the drains wait for a pass that has one.
        (Some(_), None) => return Ok(applied),
    };
    if let Some(head) = &head {
        for name in &step.undrain {
            if writer.undrain(head, name).await {
                applied.undrained.push(name.clone());
            }
        }
    }
    for marked in &step.run_drains {
        DrainJob::new(
            ctx.clone(),
            writer.regarding.clone(),
            &cluster.namespace,
            marked,
            head.clone(),
            desired.drain_timeout,
        )
        .spawn();
    }
    Ok(applied)
}

/// The writes of one step, for one cluster.
struct Writer<'a> {
    ctx: &'a Context,
    cluster: &'a ValidatedCluster,
    /// The ComputeCluster, which the Events are about.
    regarding: ObjectReference,
}

impl Writer<'_> {
    async fn write(
        &self,
        desired: &Desired,
        step: &Plan,
        token: &mut Option<String>,
        applied: &mut Applied,
    ) -> Result<(), Stop> {
        if step.create_secret {
            *token = Some(self.create_secret().await?);
        }
        if step.apply_service {
            self.apply_service(&desired.service, step.create_service)
                .await?;
        }
        let pods: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &self.cluster.namespace);
        for pod in &step.create {
            if self.create_pod(&pods, pod).await? {
                applied.created.push(pod.name_any());
            }
        }
        for (name, reason) in &step.delete {
            delete_pod(&pods, name)
                .await
                .map_err(|e| stop("Pod", name, e))?;
            self.event(
                Some(name),
                EventType::Normal,
                reason.as_str(),
                format!("deleted pod {name}"),
            )
            .await;
            applied.deleted.push((name.clone(), *reason));
        }
        for (name, reason) in &step.drain {
            let patch = serde_json::json!({
                "metadata": {"annotations": {ANNOTATION_DRAINING: Timestamp::now().to_string()}}
            });
            pods.patch(name, &patch_params(), &Patch::Merge(&patch))
                .await
                .map_err(|e| stop("Pod", name, e))?;
            self.event(
                Some(name),
                EventType::Normal,
                "DrainingWorker",
                format!(
                    "draining worker {name} before deleting it ({})",
                    reason.as_str()
                ),
            )
            .await;
            applied.marked.push((name.clone(), *reason));
        }
        Ok(())
    }

    /// Takes worker `name` back from its drain at the head, then removes its mark. A failure is
    /// logged: the next reconcile plans it again.
    async fn undrain(&self, head: &HeadAccess, name: &str) -> bool {
        let reply = match Head::connect(&head.ip, &head.token).await {
            Ok(mut client) => client.undrain(name).await,
            Err(e) => Err(e),
        };
        let reply = match reply {
            Ok(reply) => reply,
            Err(e) => {
                tracing::warn!(pod = name, error = %e, "cannot take a draining worker back");
                return false;
            }
        };
        let pods: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &self.cluster.namespace);
        let patch = serde_json::json!({"metadata": {"annotations": {ANNOTATION_DRAINING: null}}});
        if let Err(e) = pods
            .patch(name, &patch_params(), &Patch::Merge(&patch))
            .await
        {
            tracing::warn!(pod = name, error = %e, "cannot remove the drain mark of a worker taken back");
            return false;
        }
        self.event(
            Some(name),
            EventType::Normal,
            "Undrained",
            format!(
                "took worker {name} back from its drain: its group needs it again ({})",
                reply.message
            ),
        )
        .await;
        true
    }

    /// Creates the Secret with a fresh random token; returns the token.
    async fn create_secret(&self) -> Result<String, Stop> {
        let name = token_secret_name(&self.cluster.name);
        let token: String = {
            let mut rng = rand::rng();
            (0..32)
                .map(|_| format!("{:02x}", rng.random::<u8>()))
                .collect()
        };
        let secrets: Api<Secret> =
            Api::namespaced(self.ctx.client.clone(), &self.cluster.namespace);
        secrets
            .create(&post_params(), &token_secret(self.cluster, &token))
            .await
            .map_err(|e| stop("Secret", &name, e))?;
        self.event(
            None,
            EventType::Normal,
            "CreatedSecret",
            format!("created Secret {name} with the cluster token"),
        )
        .await;
        Ok(token)
    }

    /// Applies the head Service (server-side apply: only the fields the operator sets).
    async fn apply_service(&self, service: &Service, new: bool) -> Result<(), Stop> {
        let name = head_service_name(&self.cluster.name);
        let services: Api<Service> =
            Api::namespaced(self.ctx.client.clone(), &self.cluster.namespace);
        services
            .patch(
                &name,
                &PatchParams::apply(MANAGER_NAME).force(),
                &Patch::Apply(service),
            )
            .await
            .map_err(|e| stop("Service", &name, e))?;
        if new {
            self.event(
                None,
                EventType::Normal,
                "CreatedService",
                format!("created Service {name}"),
            )
            .await;
        }
        Ok(())
    }

    /// Creates `pod`; returns whether this call created it (`false`: it existed already).
    async fn create_pod(&self, pods: &Api<Pod>, pod: &Pod) -> Result<bool, Stop> {
        let name = pod.name_any();
        match pods.create(&post_params(), pod).await {
            Ok(_) => {
                self.event(
                    Some(&name),
                    EventType::Normal,
                    "CreatedPod",
                    format!("created pod {name}"),
                )
                .await;
                Ok(true)
            }
            // Created by an earlier reconcile that did not see it yet, or left by an earlier
            // cluster of the same name and about to be garbage collected; anything else holding
            // the name blocks the cluster, and the status says so.
            Err(kube::Error::Api(status)) if status.code == 409 => {
                let holder = pods
                    .get_opt(&name)
                    .await
                    .map_err(|e| stop("Pod", &name, e))?;
                let owner = holder.as_ref().and_then(|p| {
                    p.owner_references()
                        .iter()
                        .find(|o| o.controller == Some(true))
                        .map(|o| o.kind.clone())
                });
                if owner.as_deref() == Some("ComputeCluster") {
                    Ok(false)
                } else {
                    Err(Stop::Refused(Refusal::NameTaken { kind: "Pod", name }))
                }
            }
            Err(e) => {
                let stopped = stop("Pod", &name, e);
                if let Stop::Refused(refusal) = &stopped {
                    // No `related` pod: the name is new on every retry, the refusal is not.
                    self.event(
                        None,
                        EventType::Warning,
                        "CreatePodFailed",
                        format!("cannot create pod {name}: {refusal}"),
                    )
                    .await;
                }
                Err(stopped)
            }
        }
    }

    async fn event(&self, pod: Option<&str>, type_: EventType, reason: &str, note: String) {
        self.ctx
            .event(&self.regarding, pod, type_, reason, note)
            .await;
    }
}

/// Creates under the operator's field manager.
fn post_params() -> PostParams {
    PostParams {
        field_manager: Some(MANAGER_NAME.to_owned()),
        ..PostParams::default()
    }
}

/// Patches under the operator's field manager.
fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(MANAGER_NAME.to_owned()),
        ..PatchParams::default()
    }
}
