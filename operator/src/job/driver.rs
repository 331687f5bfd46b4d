//! What a job creates: its driver pods and, for a job with a cluster of its own, that
//! ComputeCluster. Pure builders, owned by the job through controller owner references.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{
        Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, Pod, PodSpec, SecretKeySelector,
        Volume, VolumeMount,
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
};
use kube::{Resource, ResourceExt};

use super::machine::{driver_pod_name, LABEL_ATTEMPT};
use crate::{
    cluster::desired::{
        container_security_context, field_env, literal_env, pod_security_context, CONTAINER_NAME,
        SCRATCH_MOUNT_PATH,
    },
    contract::{
        Role, APP_NAME, ENV_BIND, ENV_CLUSTER, ENV_HEAD, ENV_JOB, ENV_NAMESPACE, ENV_ROLE,
        ENV_TOKEN, LABEL_APP_COMPONENT, LABEL_APP_INSTANCE, LABEL_APP_NAME, LABEL_MANAGED_BY,
        LABEL_ROLE, MANAGER_NAME, TOKEN_SECRET_KEY,
    },
    crd::{ComputeCluster, ComputeJob},
    names::{head_address, token_secret_name},
};

/// Label of a job's children naming the job.
pub const LABEL_JOB: &str = "flotilla.dev/job";
/// The scratch volume of a driver pod (its only writable place).
const SCRATCH_VOLUME: &str = "scratch";

/// The job's id at the head: namespace, name and the start of its uid, so a job made again
/// under the same name counts apart.
pub fn job_id(job: &ComputeJob) -> String {
    let uid = job.metadata.uid.as_deref().unwrap_or_default();
    format!(
        "{}/{}-{}",
        job.namespace().unwrap_or_default(),
        job.name_any(),
        &uid[..uid.len().min(8)]
    )
}

/// The cluster the job runs on: the one it names, or its own, named after it.
pub fn cluster_name(job: &ComputeJob) -> String {
    match &job.spec.cluster_ref {
        Some(reference) => reference.name.clone(),
        None => format!("{}-cluster", job.name_any()),
    }
}

/// The selector of the job's driver pods.
pub fn driver_selector(job: &ComputeJob) -> String {
    format!("{LABEL_JOB}={}", job.name_any())
}

fn owner(job: &ComputeJob) -> OwnerReference {
    job.controller_owner_ref(&())
        .expect("a stored ComputeJob has a name and a uid")
}

fn labels(job: &ComputeJob) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_APP_NAME.to_owned(), APP_NAME.to_owned()),
        (LABEL_APP_INSTANCE.to_owned(), job.name_any()),
        (LABEL_MANAGED_BY.to_owned(), MANAGER_NAME.to_owned()),
        (LABEL_JOB.to_owned(), job.name_any()),
    ])
}

/// The job's own ComputeCluster.
pub fn own_cluster(job: &ComputeJob) -> Option<ComputeCluster> {
    let spec = job.spec.cluster.clone()?;
    let mut cluster = ComputeCluster::new(&cluster_name(job), spec);
    cluster.metadata.namespace = job.namespace();
    cluster.metadata.labels = Some(labels(job));
    cluster.metadata.owner_references = Some(vec![owner(job)]);
    Some(cluster)
}

/// The driver pod of `attempt`, running in `image` (the job's, else the cluster's).
pub fn driver_pod(job: &ComputeJob, attempt: i32, cluster_image: &str) -> Pod {
    let namespace = job.namespace().unwrap_or_default();
    let cluster = cluster_name(job);
    let spec = &job.spec;
    let template = spec.pod_template.clone().unwrap_or_default();
    let mut env = vec![
        literal_env(ENV_ROLE, Role::Driver.as_str()),
        literal_env(ENV_HEAD, &head_address(&cluster, &namespace)),
        EnvVar {
            name: ENV_TOKEN.to_owned(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: token_secret_name(&cluster),
                    key: TOKEN_SECRET_KEY.to_owned(),
                    ..SecretKeySelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        },
        literal_env(ENV_JOB, &job_id(job)),
        literal_env(ENV_CLUSTER, &cluster),
        literal_env(ENV_NAMESPACE, &namespace),
        field_env(ENV_BIND, "status.podIP"),
    ];
    env.extend(spec.env.iter().flatten().cloned());
    env.extend(template.env.iter().flatten().cloned());
    let mut pod_labels = template.labels.clone().unwrap_or_default();
    pod_labels.extend(labels(job));
    pod_labels.insert(LABEL_ROLE.to_owned(), Role::Driver.as_str().to_owned());
    pod_labels.insert(
        LABEL_APP_COMPONENT.to_owned(),
        Role::Driver.as_str().to_owned(),
    );
    pod_labels.insert(LABEL_ATTEMPT.to_owned(), attempt.to_string());
    let container = Container {
        name: CONTAINER_NAME.to_owned(),
        image: Some(
            spec.image
                .clone()
                .unwrap_or_else(|| cluster_image.to_owned()),
        ),
        command: spec.entrypoint.clone(),
        args: spec.args.clone(),
        env: Some(env),
        resources: spec.resources.clone(),
        // The driver's last error is the job's message: its termination message, or the end of
        // its output when it wrote none.
        termination_message_policy: Some("FallbackToLogsOnError".to_owned()),
        security_context: Some(container_security_context()),
        volume_mounts: Some(vec![VolumeMount {
            name: SCRATCH_VOLUME.to_owned(),
            mount_path: SCRATCH_MOUNT_PATH.to_owned(),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    };
    Pod {
        metadata: ObjectMeta {
            name: Some(driver_pod_name(&job.name_any(), attempt)),
            namespace: Some(namespace),
            labels: Some(pod_labels),
            annotations: template.annotations.clone(),
            owner_references: Some(vec![owner(job)]),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            containers: vec![container],
            // Each attempt is a new pod, so the operator sees every failure and counts it.
            restart_policy: Some("Never".to_owned()),
            enable_service_links: Some(false),
            automount_service_account_token: Some(template.service_account_name.is_some()),
            service_account_name: template.service_account_name.clone(),
            node_selector: template.node_selector.clone(),
            tolerations: template.tolerations.clone(),
            affinity: template.affinity.clone(),
            security_context: Some(pod_security_context(template.security_context.as_ref())),
            volumes: Some(vec![Volume {
                name: SCRATCH_VOLUME.to_owned(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            }]),
            ..PodSpec::default()
        }),
        ..Pod::default()
    }
}
