//! Leader election through a `coordination.k8s.io/v1` Lease, so that of several operator
//! replicas exactly one acts.
//!
//! The rules, as client-go's leader election has them:
//! - A standby takes the Lease when it is free, or when its record (holder, renew time) has not
//!   changed for `leaseDurationSeconds` as measured on the standby's own monotonic clock: no
//!   comparison of two machines' wall clocks, so clock skew cannot expire a live lease.
//! - The holder renews every `renew_every`, each attempt bounded by a timeout, and stops acting
//!   once it has not renewed for the renew deadline (two thirds of the lease), measured from
//!   before its last successful request: it stops before any standby may start.
//! - Writes carry the Lease's `resourceVersion`, so two replicas racing for a free Lease cannot
//!   both win.
//! - On a clean stop the holder hands the Lease back so a standby takes over at once.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

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
    /// How often the holder renews, and the time limit of one attempt.
    pub renew_every: Duration,
}

/// The Lease, held by this replica.
pub struct Leadership {
    api: Api<Lease>,
    config: LeaseConfig,
    /// The last Lease record seen, and when (on this replica's clock) it was first seen.
    observed: Mutex<Option<(String, Instant)>>,
}

impl Leadership {
    /// Waits until this replica holds the Lease.
    pub async fn acquire(client: Client, config: LeaseConfig) -> kube::Result<Self> {
        let leadership = Leadership {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: Mutex::new(None),
        };
        loop {
            match leadership.attempt().await {
                Some(Ok(true)) => return Ok(leadership),
                Some(Ok(false)) => {}
                Some(Err(e)) => tracing::warn!(error = %e, "cannot read or write the leader lease"),
                None => tracing::warn!("the API server did not answer about the lease in time"),
            }
            tokio::time::sleep(leadership.config.renew_every).await;
        }
    }

    /// Whether the Lease is free, or its record has not changed for as long as it lasts.
    fn expired(&self, lease: &Lease) -> bool {
        let Some(spec) = &lease.spec else {
            return true;
        };
        let holder = spec.holder_identity.as_deref().unwrap_or_default();
        if holder.is_empty() {
            return true;
        }
        let record = format!(
            "{holder}/{:?}/{:?}",
            spec.renew_time.as_ref().map(|t| t.0),
            spec.lease_transitions
        );
        let lasts = Duration::from_secs(
            u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0),
        );
        let mut observed = self.observed.lock().unwrap_or_else(|e| e.into_inner());
        match observed.as_ref() {
            Some((seen, since)) if *seen == record => since.elapsed() >= lasts,
            _ => {
                *observed = Some((record, Instant::now()));
                false
            }
        }
    }

    /// One try to take or renew the Lease, bounded by `renew_every`; `None` when the API server
    /// did not answer in time.
    async fn attempt(&self) -> Option<kube::Result<bool>> {
        tokio::time::timeout(self.config.renew_every, self.try_acquire())
            .await
            .ok()
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
        let mine = lease
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref())
            == Some(me.as_str());
        if !mine {
            if !self.expired(&lease) {
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

    /// Renews the Lease until it has not been renewed for the renew deadline; returns then, when
    /// this replica must stop acting, before any standby may take over.
    pub async fn keep(&self) {
        let renew_deadline = self.config.duration * 2 / 3;
        let mut last_renewal = Instant::now();
        loop {
            tokio::time::sleep(self.config.renew_every).await;
            let attempt_started = Instant::now();
            match self.attempt().await {
                Some(Ok(true)) => last_renewal = attempt_started,
                Some(Ok(false)) => {
                    tracing::error!(lease = %self.config.name, "another replica took the leader lease");
                    return;
                }
                Some(Err(e)) => tracing::warn!(error = %e, "cannot renew the leader lease"),
                None => tracing::warn!("renewing the leader lease timed out"),
            }
            if last_renewal.elapsed() >= renew_deadline {
                tracing::error!(lease = %self.config.name, "could not renew the leader lease in time");
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
