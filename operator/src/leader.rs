//! Leader election through a `coordination.k8s.io/v1` Lease, so that of several operator
//! replicas exactly one acts.
//!
//! A replica takes the Lease when it is free or expired (its holder stopped renewing it for
//! `leaseDurationSeconds`), renews it every `renew_every`, and stops acting as soon as a renewal
//! fails for longer than the lease lasts: by then another replica may have taken it. Writes use
//! the Lease's `resourceVersion`, so two replicas racing for a free Lease cannot both win. On a
//! clean stop the holder hands the Lease back so a standby takes over at once.

use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::Timestamp,
};
use kube::{
    api::{ObjectMeta, PostParams},
    Api, Client,
};

/// Where the Lease lives and who this replica is.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Name of the Lease.
    pub name: String,
    /// Namespace of the Lease (the operator's own).
    pub namespace: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    /// How long a Lease stays valid without renewal.
    pub duration: Duration,
    /// How often the holder renews.
    pub renew_every: Duration,
}

/// The Lease, held by this replica.
pub struct Leadership {
    api: Api<Lease>,
    config: LeaseConfig,
}

fn expired(lease: &Lease, now: Timestamp) -> bool {
    let Some(spec) = &lease.spec else {
        return true;
    };
    if spec
        .holder_identity
        .as_deref()
        .unwrap_or_default()
        .is_empty()
    {
        return true;
    }
    let duration_ms = i64::from(spec.lease_duration_seconds.unwrap_or(0)) * 1000;
    match &spec.renew_time {
        Some(MicroTime(renewed)) => renewed.as_millisecond() + duration_ms < now.as_millisecond(),
        None => true,
    }
}

impl Leadership {
    /// Waits until this replica holds the Lease.
    pub async fn acquire(client: Client, config: LeaseConfig) -> kube::Result<Self> {
        let leadership = Leadership {
            api: Api::namespaced(client, &config.namespace),
            config,
        };
        loop {
            match leadership.try_acquire().await {
                Ok(true) => return Ok(leadership),
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "cannot read or write the leader lease"),
            }
            tokio::time::sleep(leadership.config.renew_every).await;
        }
    }

    /// Takes or renews the Lease; `false` when another replica holds it or won a race.
    async fn try_acquire(&self) -> kube::Result<bool> {
        let now = Timestamp::now();
        let me = &self.config.identity;
        let duration = i32::try_from(self.config.duration.as_secs()).unwrap_or(i32::MAX);
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me.clone()),
                    lease_duration_seconds: Some(duration),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return conflict_is_false(self.api.create(&PostParams::default(), &lease).await);
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let mine = spec.holder_identity.as_deref() == Some(me.as_str());
        if !mine {
            if !expired(&lease, now) {
                return Ok(false);
            }
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            spec.holder_identity = Some(me.clone());
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            tracing::info!(lease = %self.config.name, "taking over the leader lease");
        }
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        spec.renew_time = Some(MicroTime(now));
        spec.lease_duration_seconds = Some(duration);
        conflict_is_false(
            self.api
                .replace(&self.config.name, &PostParams::default(), &lease)
                .await,
        )
    }

    /// Renews the Lease until a renewal has failed for as long as the Lease lasts; returns then,
    /// when this replica must stop acting.
    pub async fn keep(&self) {
        let mut last_renewal = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.config.renew_every).await;
            match self.try_acquire().await {
                Ok(true) => last_renewal = tokio::time::Instant::now(),
                Ok(false) => {
                    tracing::error!(lease = %self.config.name, "another replica took the leader lease");
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "cannot renew the leader lease"),
            }
            if last_renewal.elapsed() >= self.config.duration {
                tracing::error!(lease = %self.config.name, "the leader lease expired before it could be renewed");
                return;
            }
        }
    }

    /// Hands the Lease back, so that a standby replica takes over without waiting for it to
    /// expire.
    pub async fn release(self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.config.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        if let Err(e) = self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            tracing::warn!(error = %e, "cannot hand back the leader lease");
        }
    }
}

/// A write that lost a race (409) means another replica got there first.
fn conflict_is_false<T>(result: kube::Result<T>) -> kube::Result<bool> {
    match result {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}
