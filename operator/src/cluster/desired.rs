//! The children a [`ValidatedCluster`] asks for, built once per reconcile before planning: the
//! head Service, the head pod, and one template pod per worker group with its template hash; and
//! the token Secret, once there is a token to put in it. Pure: no API calls, no randomness, no
//! clock.
//!
//! Every child carries the cluster's controller owner reference (deleting the cluster deletes
//! it), the common labels, and, for pods, a non-root, read-only, capability-free security setup.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::{
    api::core::v1::{
        Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
        HTTPGetAction, ObjectFieldSelector, Pod, PodSecurityContext, PodSpec, Probe,
        ResourceRequirements, SeccompProfile, Secret, SecretKeySelector, SecurityContext, Service,
        ServicePort, ServiceSpec, Volume, VolumeMount,
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
    ByteString,
};

use super::validate::{ValidatedCluster, ValidatedGroup};
use crate::{
    contract::{
        format_resources, Role, ENV_BIND, ENV_CLUSTER, ENV_GROUP, ENV_HEAD, ENV_NAMESPACE,
        ENV_RESOURCES, ENV_ROLE, ENV_SLOTS, ENV_TOKEN, ENV_WORKER_NAME, HEAD_GRPC_PORT,
        HEAD_HTTP_PORT, LABEL_APP_COMPONENT, LABEL_GROUP, LABEL_ROLE, LABEL_TEMPLATE_HASH,
        READINESS_PATH, TOKEN_SECRET_KEY, WORKER_HTTP_PORT,
    },
    crd::PodTemplateOverrides,
    names::{
        cluster_labels, head_address, head_pod_name, head_selector, head_service_name,
        token_secret_name, worker_pod_name,
    },
};

/// Name of the only container of head and worker pods.
pub const CONTAINER_NAME: &str = "flotilla";
/// User and group id pods run as unless the pod template says otherwise.
pub const DEFAULT_RUN_AS: i64 = 65532;
/// Where the writable scratch volume is mounted (the root filesystem is read-only).
pub const SCRATCH_MOUNT_PATH: &str = "/tmp";
/// How long a worker may take to drain when the spec does not say.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(300);
const SCRATCH_VOLUME: &str = "scratch";

/// Everything a validated spec asks for.
#[derive(Clone, Debug)]
pub struct Desired {
    /// Name of the cluster.
    pub cluster: String,
    /// Whether every pod should be stopped.
    pub suspend: bool,
    /// How long a worker may take to drain before its pod is deleted anyway.
    pub drain_timeout: Duration,
    /// The head Service.
    pub service: Service,
    /// The head pod.
    pub head: Pod,
    /// The template hash of the head pod; a head pod with another one is stale.
    pub head_hash: String,
    /// One template per worker group, in spec order.
    pub workers: Vec<WorkerTemplate>,
}

impl Desired {
    /// Builds every child `cluster` asks for.
    pub fn of(cluster: &ValidatedCluster) -> Self {
        let (head, head_hash) = head_pod(cluster);
        let drain_timeout = cluster
            .autoscaling
            .as_ref()
            .and_then(|a| u64::try_from(a.scale_down.drain_timeout_seconds).ok())
            .map_or(DEFAULT_DRAIN_TIMEOUT, Duration::from_secs);
        Desired {
            cluster: cluster.name.clone(),
            suspend: cluster.suspend,
            drain_timeout,
            service: head_service(cluster),
            head,
            head_hash,
            workers: cluster
                .groups
                .iter()
                .map(|group| WorkerTemplate::new(cluster, group))
                .collect(),
        }
    }

    /// The template of worker group `group`, if the spec has that group.
    pub fn group(&self, group: &str) -> Option<&WorkerTemplate> {
        self.workers.iter().find(|template| template.group == group)
    }
}

/// The worker pod every member of one group is made from.
#[derive(Clone, Debug)]
pub struct WorkerTemplate {
    /// Name of the cluster.
    cluster: String,
    /// Name of the group.
    pub group: String,
    /// Workers the group should have.
    pub replicas: usize,
    /// The template hash every current worker of the group carries; a worker with another one is
    /// stale.
    pub hash: String,
    /// A worker pod of the group, all but its name.
    template: Pod,
}

impl WorkerTemplate {
    /// The template of `group`.
    pub fn new(cluster: &ValidatedCluster, group: &ValidatedGroup) -> Self {
        let mut env = vec![
            literal_env(ENV_ROLE, Role::Worker.as_str()),
            literal_env(ENV_HEAD, &head_address(&cluster.name, &cluster.namespace)),
            token_env(cluster),
            literal_env(ENV_CLUSTER, &cluster.name),
            literal_env(ENV_NAMESPACE, &cluster.namespace),
            literal_env(ENV_GROUP, &group.name),
            field_env(ENV_WORKER_NAME, "metadata.name"),
        ];
        if let Some(slots) = group.slots {
            env.push(literal_env(ENV_SLOTS, &slots.to_string()));
        }
        if !group.custom.is_empty() {
            let resources = format_resources(group.custom.iter().map(|(k, v)| (k.as_str(), *v)));
            env.push(literal_env(ENV_RESOURCES, &resources));
        }
        env.push(field_env(ENV_BIND, "status.podIP"));
        let mut labels = cluster_labels(&cluster.name);
        labels.extend(role_labels(Role::Worker));
        labels.insert(LABEL_GROUP.to_owned(), group.name.clone());
        let (template, hash) = build_pod(
            cluster,
            PodParts {
                role: Role::Worker,
                // Each pod gets its own name; the hash, which leaves names out, is the group's.
                name: None,
                labels,
                env,
                ports: vec![container_port("http", WORKER_HTTP_PORT)],
                resources: group.resources.as_ref(),
                template: &group.template,
            },
        );
        WorkerTemplate {
            cluster: cluster.name.clone(),
            group: group.name.clone(),
            replicas: group.replicas as usize,
            hash,
            template,
        }
    }

    /// A worker pod of the group, named `<cluster>-<group>-<suffix>`; the caller picks a suffix
    /// no other worker of the group has.
    pub fn pod(&self, suffix: &str) -> Pod {
        let mut pod = self.template.clone();
        pod.metadata.name = Some(worker_pod_name(&self.cluster, &self.group, suffix));
        pod
    }
}

/// The Secret holding the cluster token. The caller makes the token (once, randomly) and keeps
/// it: replacing it would lock out running workers.
pub fn token_secret(cluster: &ValidatedCluster, token: &str) -> Secret {
    Secret {
        metadata: child_metadata(
            cluster,
            Some(token_secret_name(&cluster.name)),
            cluster_labels(&cluster.name),
            None,
        ),
        type_: Some("Opaque".to_owned()),
        data: Some(BTreeMap::from([(
            TOKEN_SECRET_KEY.to_owned(),
            ByteString(token.as_bytes().to_vec()),
        )])),
        ..Secret::default()
    }
}

/// The head Service: gRPC and HTTP ports, selecting the head pod.
fn head_service(cluster: &ValidatedCluster) -> Service {
    let mut labels = cluster_labels(&cluster.name);
    labels.extend(role_labels(Role::Head));
    Service {
        metadata: child_metadata(
            cluster,
            Some(head_service_name(&cluster.name)),
            labels,
            None,
        ),
        spec: Some(ServiceSpec {
            type_: Some(cluster.head.service_type.as_str().to_owned()),
            selector: Some(head_selector(&cluster.name)),
            ports: Some(vec![
                service_port("grpc", HEAD_GRPC_PORT),
                service_port("http", HEAD_HTTP_PORT),
            ]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The head pod and its template hash.
fn head_pod(cluster: &ValidatedCluster) -> (Pod, String) {
    let env = vec![
        literal_env(ENV_ROLE, Role::Head.as_str()),
        token_env(cluster),
        literal_env(ENV_CLUSTER, &cluster.name),
        literal_env(ENV_NAMESPACE, &cluster.namespace),
        field_env(ENV_BIND, "status.podIP"),
    ];
    let mut labels = cluster_labels(&cluster.name);
    labels.extend(role_labels(Role::Head));
    build_pod(
        cluster,
        PodParts {
            role: Role::Head,
            name: Some(head_pod_name(&cluster.name)),
            labels,
            env,
            ports: vec![
                container_port("grpc", HEAD_GRPC_PORT),
                container_port("http", HEAD_HTTP_PORT),
            ],
            resources: cluster.head.resources.as_ref(),
            template: &cluster.head.template,
        },
    )
}

fn role_labels(role: Role) -> [(String, String); 2] {
    [
        (LABEL_ROLE.to_owned(), role.as_str().to_owned()),
        (LABEL_APP_COMPONENT.to_owned(), role.as_str().to_owned()),
    ]
}

fn child_metadata(
    cluster: &ValidatedCluster,
    name: Option<String>,
    labels: BTreeMap<String, String>,
    annotations: Option<BTreeMap<String, String>>,
) -> ObjectMeta {
    ObjectMeta {
        name,
        namespace: Some(cluster.namespace.clone()),
        labels: Some(labels),
        annotations,
        owner_references: Some(vec![cluster.owner.clone()]),
        ..ObjectMeta::default()
    }
}

/// What differs between the head pod and a worker pod.
struct PodParts<'a> {
    role: Role,
    /// The pod's name; `None` for a template.
    name: Option<String>,
    /// The operator's labels.
    labels: BTreeMap<String, String>,
    /// The operator's environment variables.
    env: Vec<EnvVar>,
    /// Container ports; the readiness probe asks the one named `http`.
    ports: Vec<ContainerPort>,
    resources: Option<&'a ResourceRequirements>,
    template: &'a PodTemplateOverrides,
}

/// The pod, with its template hash as a label, and the hash.
fn build_pod(cluster: &ValidatedCluster, parts: PodParts<'_>) -> (Pod, String) {
    let PodParts {
        role,
        name,
        labels: operator_labels,
        mut env,
        ports,
        resources,
        template,
    } = parts;
    env.extend(template.env.iter().flatten().cloned());
    // The user's labels first, so the operator's win (validation refuses overlaps anyway).
    let mut labels = template.labels.clone().unwrap_or_default();
    labels.extend(operator_labels);

    let container = Container {
        name: CONTAINER_NAME.to_owned(),
        image: Some(cluster.image.clone()),
        image_pull_policy: cluster.image_pull_policy.map(|p| p.as_str().to_owned()),
        command: cluster.command.clone(),
        // The stock `flotilla` binary takes the role as its subcommand; programs built with
        // `#[flotilla::main]` read FLOTILLA_ROLE and ignore it.
        args: Some(vec![role.as_str().to_owned()]),
        env: Some(env),
        ports: Some(ports),
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some(READINESS_PATH.to_owned()),
                port: IntOrString::String("http".to_owned()),
                ..HTTPGetAction::default()
            }),
            period_seconds: Some(5),
            failure_threshold: Some(3),
            ..Probe::default()
        }),
        resources: resources.cloned(),
        security_context: Some(container_security_context()),
        volume_mounts: Some(vec![VolumeMount {
            name: SCRATCH_VOLUME.to_owned(),
            mount_path: SCRATCH_MOUNT_PATH.to_owned(),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    };

    let spec = PodSpec {
        containers: vec![container],
        restart_policy: Some("Always".to_owned()),
        enable_service_links: Some(false),
        // Flotilla itself never calls the Kubernetes API; mount a token only for a service
        // account the user asked for.
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
    };

    let mut pod = Pod {
        metadata: child_metadata(cluster, name, labels, template.annotations.clone()),
        spec: Some(spec),
        ..Pod::default()
    };
    let hash = template_hash(&pod);
    if let Some(labels) = pod.metadata.labels.as_mut() {
        labels.insert(LABEL_TEMPLATE_HASH.to_owned(), hash.clone());
    }
    (pod, hash)
}

/// FNV-1a over the pod's spec, labels and annotations (not its name), stable across builds and
/// Rust versions, so a restarted operator agrees with the hashes it wrote before.
fn template_hash(pod: &Pod) -> String {
    // serde_json writes maps in key order (BTreeMap), so equal templates give equal text.
    let text = serde_json::to_string(&(&pod.spec, &pod.metadata.labels, &pod.metadata.annotations))
        .expect("Kubernetes objects always serialize to JSON");
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

pub(crate) fn pod_security_context(user: Option<&PodSecurityContext>) -> PodSecurityContext {
    let mut context = user.cloned().unwrap_or_default();
    context.run_as_non_root = Some(true);
    context.run_as_user.get_or_insert(DEFAULT_RUN_AS);
    context.run_as_group.get_or_insert(DEFAULT_RUN_AS);
    context.fs_group.get_or_insert(DEFAULT_RUN_AS);
    context.seccomp_profile.get_or_insert(SeccompProfile {
        type_: "RuntimeDefault".to_owned(),
        ..SeccompProfile::default()
    });
    context
}

pub(crate) fn container_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            ..Capabilities::default()
        }),
        ..SecurityContext::default()
    }
}

fn container_port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_owned()),
        container_port: port,
        protocol: Some("TCP".to_owned()),
        ..ContainerPort::default()
    }
}

fn service_port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.to_owned()),
        port,
        target_port: Some(IntOrString::String(name.to_owned())),
        protocol: Some("TCP".to_owned()),
        ..ServicePort::default()
    }
}

pub(crate) fn literal_env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.to_owned()),
        ..EnvVar::default()
    }
}

pub(crate) fn field_env(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.to_owned(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn token_env(cluster: &ValidatedCluster) -> EnvVar {
    EnvVar {
        name: ENV_TOKEN.to_owned(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: token_secret_name(&cluster.name),
                key: TOKEN_SECRET_KEY.to_owned(),
                ..SecretKeySelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::EnvVar;

    use super::*;
    use crate::{
        cluster::{pods, validate::validate},
        crd::ComputeCluster,
        names::worker_selector,
    };

    const FIXTURE: &str = r#"
apiVersion: flotilla.dev/v1alpha1
kind: ComputeCluster
metadata: {name: demo, namespace: science, uid: 6f1c2b9e-0000-4000-8000-000000000001}
spec:
  image: registry.example/flotilla:1.0
  imagePullPolicy: IfNotPresent
  command: [flotilla]
  head:
    serviceType: NodePort
    resources: {limits: {cpu: "1", memory: 1Gi}}
  workerGroups:
  - name: cpu
    replicas: 2
    resources: {limits: {cpu: 4}}
    podTemplate:
      labels: {team: physics}
      annotations: {note: hello}
      env: [{name: RUST_LOG, value: debug}]
      nodeSelector: {pool: compute}
      tolerations: [{key: dedicated, operator: Equal, value: flotilla, effect: NoSchedule}]
      serviceAccountName: science-runner
      securityContext: {runAsUser: 1000}
  - name: plain
"#;

    fn fixture() -> ValidatedCluster {
        let cluster: ComputeCluster = serde_yaml::from_str(FIXTURE).expect("fixture parses");
        validate(&cluster).expect("fixture is valid")
    }

    fn worker_pod(cluster: &ValidatedCluster, group: &ValidatedGroup, suffix: &str) -> Pod {
        WorkerTemplate::new(cluster, group).pod(suffix)
    }

    fn env<'a>(pod: &'a Pod, name: &str) -> Option<&'a EnvVar> {
        container(pod)
            .env
            .iter()
            .flatten()
            .find(|var| var.name == name)
    }

    fn literal<'a>(pod: &'a Pod, name: &str) -> Option<&'a str> {
        env(pod, name)?.value.as_deref()
    }

    fn field_ref<'a>(pod: &'a Pod, name: &str) -> Option<&'a str> {
        Some(
            env(pod, name)?
                .value_from
                .as_ref()?
                .field_ref
                .as_ref()?
                .field_path
                .as_str(),
        )
    }

    /// The container's ports: name and number.
    fn ports(pod: &Pod) -> Vec<(Option<&str>, i32)> {
        container(pod)
            .ports
            .iter()
            .flatten()
            .map(|p| (p.name.as_deref(), p.container_port))
            .collect()
    }

    fn container(pod: &Pod) -> &Container {
        &pod.spec.as_ref().expect("pod spec").containers[0]
    }

    fn assert_owned_by_demo(metadata: &ObjectMeta) {
        let owners = metadata
            .owner_references
            .as_ref()
            .expect("owner references");
        assert_eq!(owners.len(), 1);
        assert_eq!(owners[0].kind, "ComputeCluster");
        assert_eq!(owners[0].api_version, "flotilla.dev/v1alpha1");
        assert_eq!(owners[0].name, "demo");
        assert_eq!(owners[0].uid, "6f1c2b9e-0000-4000-8000-000000000001");
        assert_eq!(owners[0].controller, Some(true));
        assert_eq!(metadata.namespace.as_deref(), Some("science"));
        let labels = metadata.labels.as_ref().expect("labels");
        assert_eq!(
            labels.get("app.kubernetes.io/name").map(String::as_str),
            Some("flotilla")
        );
        assert_eq!(
            labels.get("flotilla.dev/cluster").map(String::as_str),
            Some("demo")
        );
    }

    fn assert_hardened(pod: &Pod) {
        let spec = pod.spec.as_ref().expect("pod spec");
        let pod_context = spec
            .security_context
            .as_ref()
            .expect("pod security context");
        assert_eq!(pod_context.run_as_non_root, Some(true));
        assert_eq!(
            pod_context
                .seccomp_profile
                .as_ref()
                .map(|p| p.type_.as_str()),
            Some("RuntimeDefault")
        );
        let context = container(pod)
            .security_context
            .as_ref()
            .expect("container security context");
        assert_eq!(context.run_as_non_root, Some(true));
        assert_eq!(context.read_only_root_filesystem, Some(true));
        assert_eq!(context.allow_privilege_escalation, Some(false));
        assert_eq!(
            context.capabilities.as_ref().and_then(|c| c.drop.clone()),
            Some(vec!["ALL".to_owned()])
        );
        let mounts = container(pod).volume_mounts.as_ref().expect("mounts");
        assert_eq!(mounts[0].mount_path, "/tmp");
        let probe = container(pod)
            .readiness_probe
            .as_ref()
            .expect("readiness probe");
        let http = probe.http_get.as_ref().expect("http probe");
        assert_eq!(http.path.as_deref(), Some("/readyz"));
        assert_eq!(http.port, IntOrString::String("http".into()));
    }

    #[test]
    fn token_secret_holds_the_token() {
        let secret = token_secret(&fixture(), "s3cret");
        assert_eq!(secret.metadata.name.as_deref(), Some("demo-token"));
        assert_owned_by_demo(&secret.metadata);
        let data = secret.data.expect("data");
        assert_eq!(data["token"].0, b"s3cret");
    }

    #[test]
    fn head_service_exposes_grpc_and_http_and_selects_the_head() {
        let cluster = fixture();
        let service = head_service(&cluster);
        assert_owned_by_demo(&service.metadata);
        let expected: serde_json::Value = serde_yaml::from_str(
            r#"
type: NodePort
selector: {app.kubernetes.io/name: flotilla, flotilla.dev/cluster: demo, flotilla.dev/role: head}
ports:
- {name: grpc, port: 7400, targetPort: grpc, protocol: TCP}
- {name: http, port: 7401, targetPort: http, protocol: TCP}
"#,
        )
        .expect("expected spec parses");
        assert_eq!(
            serde_json::to_value(&service.spec).expect("serializes"),
            expected
        );

        let pod_labels = Desired::of(&cluster).head.metadata.labels.expect("labels");
        for (key, value) in head_selector("demo") {
            assert_eq!(
                pod_labels.get(&key),
                Some(&value),
                "head pod lacks selector label {key}"
            );
        }
    }

    #[test]
    fn head_pod_runs_the_head_role() {
        let cluster = fixture();
        let pod = Desired::of(&cluster).head;
        assert_eq!(pod.metadata.name.as_deref(), Some("demo-head"));
        assert_owned_by_demo(&pod.metadata);
        assert_hardened(&pod);
        assert_eq!(literal(&pod, "FLOTILLA_ROLE"), Some("head"));
        assert_eq!(literal(&pod, "FLOTILLA_CLUSTER"), Some("demo"));
        assert_eq!(literal(&pod, "FLOTILLA_NAMESPACE"), Some("science"));
        assert_eq!(field_ref(&pod, "FLOTILLA_BIND"), Some("status.podIP"));
        assert!(env(&pod, "FLOTILLA_HEAD").is_none());
        let ports = ports(&pod);
        assert_eq!(ports, vec![(Some("grpc"), 7400), (Some("http"), 7401)]);
        assert_eq!(
            container(&pod).image.as_deref(),
            Some("registry.example/flotilla:1.0")
        );
        assert_eq!(
            container(&pod).image_pull_policy.as_deref(),
            Some("IfNotPresent")
        );
        assert_eq!(container(&pod).command, Some(vec!["flotilla".to_owned()]));
        assert_eq!(container(&pod).args, Some(vec!["head".to_owned()]));
        let limits = container(&pod)
            .resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .expect("limits");
        assert_eq!(limits["memory"].0, "1Gi");
        let spec = pod.spec.as_ref().expect("spec");
        assert_eq!(spec.automount_service_account_token, Some(false));
        assert_eq!(
            spec.security_context.as_ref().and_then(|c| c.run_as_user),
            Some(DEFAULT_RUN_AS)
        );
    }

    #[test]
    fn worker_pod_carries_the_contract_env() {
        let cluster = fixture();
        let group = cluster.group("cpu").expect("group cpu");
        let pod = worker_pod(&cluster, group, "x7k2q");
        assert_eq!(pod.metadata.name.as_deref(), Some("demo-cpu-x7k2q"));
        assert_owned_by_demo(&pod.metadata);
        assert_hardened(&pod);
        assert_eq!(literal(&pod, "FLOTILLA_ROLE"), Some("worker"));
        assert_eq!(
            literal(&pod, "FLOTILLA_HEAD"),
            Some("demo-head.science.svc:7400")
        );
        assert_eq!(literal(&pod, "FLOTILLA_CLUSTER"), Some("demo"));
        assert_eq!(literal(&pod, "FLOTILLA_NAMESPACE"), Some("science"));
        assert_eq!(literal(&pod, "FLOTILLA_GROUP"), Some("cpu"));
        assert_eq!(literal(&pod, "FLOTILLA_SLOTS"), Some("4"));
        assert_eq!(
            field_ref(&pod, "FLOTILLA_WORKER_NAME"),
            Some("metadata.name")
        );
        assert_eq!(field_ref(&pod, "FLOTILLA_BIND"), Some("status.podIP"));
        let token = env(&pod, "FLOTILLA_TOKEN")
            .and_then(|var| var.value_from.as_ref())
            .and_then(|from| from.secret_key_ref.as_ref())
            .expect("token from the secret");
        assert_eq!(
            (token.name.as_str(), token.key.as_str()),
            ("demo-token", "token")
        );
        let labels = pod.metadata.labels.as_ref().expect("labels");
        for (key, value) in worker_selector("demo", "cpu") {
            assert_eq!(
                labels.get(&key),
                Some(&value),
                "worker pod lacks selector label {key}"
            );
        }
        let ports = ports(&pod);
        assert_eq!(
            ports,
            vec![(Some("http"), 7403)],
            "a worker serves on HTTP only"
        );
        assert_eq!(container(&pod).args, Some(vec!["worker".to_owned()]));
    }

    #[test]
    fn a_group_offering_custom_resources_tells_its_workers() {
        let mut cluster = fixture();
        let plain = WorkerTemplate::new(&cluster, &cluster.groups[0]);
        assert_eq!(literal(&plain.pod("a"), "FLOTILLA_RESOURCES"), None);
        cluster.groups[0].custom = [("tpu".to_owned(), 4), ("gpu".to_owned(), 1)].into();
        let offering = WorkerTemplate::new(&cluster, &cluster.groups[0]);
        assert_eq!(
            literal(&offering.pod("a"), "FLOTILLA_RESOURCES"),
            Some("gpu=1,tpu=4")
        );
        assert_ne!(plain.hash, offering.hash, "workers without them are stale");
    }

    #[test]
    fn pod_template_overrides_are_applied() {
        let cluster = fixture();
        let pod = worker_pod(&cluster, cluster.group("cpu").expect("group"), "aaaaa");
        let labels = pod.metadata.labels.as_ref().expect("labels");
        assert_eq!(labels.get("team").map(String::as_str), Some("physics"));
        assert_eq!(
            pod.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("note"))
                .map(String::as_str),
            Some("hello")
        );
        assert_eq!(literal(&pod, "RUST_LOG"), Some("debug"));
        let names: Vec<_> = container(&pod)
            .env
            .iter()
            .flatten()
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(
            names.last(),
            Some(&"RUST_LOG"),
            "user env comes after the operator's"
        );
        let spec = pod.spec.as_ref().expect("spec");
        assert_eq!(
            spec.node_selector
                .as_ref()
                .and_then(|s| s.get("pool"))
                .map(String::as_str),
            Some("compute")
        );
        assert_eq!(spec.tolerations.as_ref().map(Vec::len), Some(1));
        assert_eq!(spec.service_account_name.as_deref(), Some("science-runner"));
        assert_eq!(spec.automount_service_account_token, Some(true));
        let context = spec
            .security_context
            .as_ref()
            .expect("pod security context");
        assert_eq!(context.run_as_user, Some(1000));
        assert_eq!(context.run_as_non_root, Some(true));

        let plain = worker_pod(&cluster, cluster.group("plain").expect("group"), "bbbbb");
        assert!(
            env(&plain, "FLOTILLA_SLOTS").is_none(),
            "no slots and no CPU: the worker counts"
        );
        assert!(env(&plain, "RUST_LOG").is_none());
        assert_eq!(
            plain.spec.as_ref().and_then(|s| s.node_selector.clone()),
            None
        );
    }

    #[test]
    fn template_hash_tracks_the_template_not_the_name() {
        let cluster = fixture();
        let group = cluster.group("cpu").expect("group");
        let first = worker_pod(&cluster, group, "aaaaa");
        let second = worker_pod(&cluster, group, "bbbbb");
        let hash = pods::template_hash(&first).expect("hash label");
        assert_eq!(hash.len(), 16);
        assert_eq!(pods::template_hash(&second), Some(hash));
        assert_eq!(WorkerTemplate::new(&cluster, group).hash, hash);

        let mut changed = cluster.clone();
        changed.image = "registry.example/flotilla:1.1".into();
        let changed_group = changed.group("cpu").expect("group");
        assert_ne!(WorkerTemplate::new(&changed, changed_group).hash, hash);
        let head = Desired::of(&cluster);
        assert_ne!(Desired::of(&changed).head_hash, head.head_hash);
        assert_eq!(
            pods::template_hash(&head.head),
            Some(head.head_hash.as_str())
        );

        let other_group = cluster.group("plain").expect("group");
        assert_ne!(WorkerTemplate::new(&cluster, other_group).hash, hash);
    }
}
