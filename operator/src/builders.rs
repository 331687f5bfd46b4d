//! Builds the children a [`ValidatedCluster`] should have: its token Secret, head pod, head
//! Service and worker pods. Pure functions: no API calls, no randomness, no clock.
//!
//! Every child carries the cluster's controller owner reference (deleting the cluster deletes
//! it), the common labels, and, for pods, a non-root, read-only, capability-free security setup.

use std::collections::BTreeMap;

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

use crate::{
    contract::{
        Role, APP_NAME, ENV_BIND, ENV_CLUSTER, ENV_GROUP, ENV_HEAD, ENV_NAMESPACE, ENV_ROLE,
        ENV_SLOTS, ENV_TOKEN, ENV_WORKER_NAME, HEAD_GRPC_PORT, HEAD_HTTP_PORT, LABEL_APP_COMPONENT,
        LABEL_APP_INSTANCE, LABEL_APP_NAME, LABEL_CLUSTER, LABEL_GROUP, LABEL_MANAGED_BY,
        LABEL_ROLE, LABEL_TEMPLATE_HASH, MANAGER_NAME, READINESS_PATH, TOKEN_SECRET_KEY,
        WORKER_GRPC_PORT, WORKER_HTTP_PORT,
    },
    crd::PodTemplateOverrides,
    validation::{ValidatedCluster, ValidatedGroup},
};

/// Name of the only container of head and worker pods.
pub const CONTAINER_NAME: &str = "flotilla";
/// User and group id pods run as unless the pod template says otherwise.
pub const DEFAULT_RUN_AS: i64 = 65532;
/// Where the writable scratch volume is mounted (the root filesystem is read-only).
pub const SCRATCH_MOUNT_PATH: &str = "/tmp";
const SCRATCH_VOLUME: &str = "scratch";

/// Name of the cluster's token Secret.
pub fn token_secret_name(cluster: &str) -> String {
    format!("{cluster}-token")
}

/// Name of the head pod.
pub fn head_pod_name(cluster: &str) -> String {
    format!("{cluster}-head")
}

/// Name of the head Service.
pub fn head_service_name(cluster: &str) -> String {
    format!("{cluster}-head")
}

/// Name of a worker pod: `<cluster>-<group>-<suffix>`.
pub fn worker_pod_name(cluster: &str, group: &str, suffix: &str) -> String {
    format!("{cluster}-{group}-{suffix}")
}

/// The head's gRPC address as workers reach it: the Service's DNS name and port.
pub fn head_address(cluster: &ValidatedCluster) -> String {
    format!(
        "{}.{}.svc:{HEAD_GRPC_PORT}",
        head_service_name(&cluster.name),
        cluster.namespace
    )
}

/// Labels on every child of a cluster; also the selector of all of them.
pub fn cluster_labels(cluster: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_APP_NAME.to_owned(), APP_NAME.to_owned()),
        (LABEL_APP_INSTANCE.to_owned(), cluster.to_owned()),
        (LABEL_MANAGED_BY.to_owned(), MANAGER_NAME.to_owned()),
        (LABEL_CLUSTER.to_owned(), cluster.to_owned()),
    ])
}

/// Labels selecting the head pod.
pub fn head_selector(cluster: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_APP_NAME.to_owned(), APP_NAME.to_owned()),
        (LABEL_CLUSTER.to_owned(), cluster.to_owned()),
        (LABEL_ROLE.to_owned(), Role::Head.as_str().to_owned()),
    ])
}

/// Labels selecting the worker pods of one group.
pub fn worker_selector(cluster: &str, group: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_APP_NAME.to_owned(), APP_NAME.to_owned()),
        (LABEL_CLUSTER.to_owned(), cluster.to_owned()),
        (LABEL_ROLE.to_owned(), Role::Worker.as_str().to_owned()),
        (LABEL_GROUP.to_owned(), group.to_owned()),
    ])
}

/// The Secret holding the cluster token. The caller makes the token (once, randomly) and keeps
/// it: replacing it would lock out running workers.
pub fn token_secret(cluster: &ValidatedCluster, token: &str) -> Secret {
    Secret {
        metadata: child_metadata(
            cluster,
            token_secret_name(&cluster.name),
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
pub fn head_service(cluster: &ValidatedCluster) -> Service {
    let mut labels = cluster_labels(&cluster.name);
    labels.extend(role_labels(Role::Head));
    Service {
        metadata: child_metadata(cluster, head_service_name(&cluster.name), labels, None),
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

/// The head pod.
pub fn head_pod(cluster: &ValidatedCluster) -> Pod {
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
            name: head_pod_name(&cluster.name),
            labels,
            env,
            ports: (HEAD_GRPC_PORT, HEAD_HTTP_PORT),
            resources: cluster.head.resources.as_ref(),
            template: &cluster.head.template,
        },
    )
}

/// A worker pod of `group`, named `<cluster>-<group>-<suffix>`; the caller picks a suffix no
/// other worker of the group has.
pub fn worker_pod(cluster: &ValidatedCluster, group: &ValidatedGroup, suffix: &str) -> Pod {
    let mut env = vec![
        literal_env(ENV_ROLE, Role::Worker.as_str()),
        literal_env(ENV_HEAD, &head_address(cluster)),
        token_env(cluster),
        literal_env(ENV_CLUSTER, &cluster.name),
        literal_env(ENV_NAMESPACE, &cluster.namespace),
        literal_env(ENV_GROUP, &group.name),
        field_env(ENV_WORKER_NAME, "metadata.name"),
    ];
    if let Some(slots) = group.slots {
        env.push(literal_env(ENV_SLOTS, &slots.to_string()));
    }
    env.push(field_env(ENV_BIND, "status.podIP"));
    let mut labels = cluster_labels(&cluster.name);
    labels.extend(role_labels(Role::Worker));
    labels.insert(LABEL_GROUP.to_owned(), group.name.clone());
    build_pod(
        cluster,
        PodParts {
            role: Role::Worker,
            name: worker_pod_name(&cluster.name, &group.name, suffix),
            labels,
            env,
            ports: (WORKER_GRPC_PORT, WORKER_HTTP_PORT),
            resources: group.resources.as_ref(),
            template: &group.template,
        },
    )
}

/// The template hash a fresh worker pod of `group` would carry; pods with another hash are stale.
pub fn worker_template_hash(cluster: &ValidatedCluster, group: &ValidatedGroup) -> String {
    template_hash_of(&worker_pod(cluster, group, ""))
        .expect("built pods always carry the template hash label")
}

/// The template hash a fresh head pod would carry.
pub fn head_template_hash(cluster: &ValidatedCluster) -> String {
    template_hash_of(&head_pod(cluster)).expect("built pods always carry the template hash label")
}

/// The template hash label of a pod, if it has one.
pub fn template_hash_of(pod: &Pod) -> Option<String> {
    pod.metadata
        .labels
        .as_ref()?
        .get(LABEL_TEMPLATE_HASH)
        .cloned()
}

fn role_labels(role: Role) -> [(String, String); 2] {
    [
        (LABEL_ROLE.to_owned(), role.as_str().to_owned()),
        (LABEL_APP_COMPONENT.to_owned(), role.as_str().to_owned()),
    ]
}

fn child_metadata(
    cluster: &ValidatedCluster,
    name: String,
    labels: BTreeMap<String, String>,
    annotations: Option<BTreeMap<String, String>>,
) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
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
    name: String,
    /// The operator's labels.
    labels: BTreeMap<String, String>,
    /// The operator's environment variables.
    env: Vec<EnvVar>,
    /// gRPC and HTTP container ports.
    ports: (i32, i32),
    resources: Option<&'a ResourceRequirements>,
    template: &'a PodTemplateOverrides,
}

fn build_pod(cluster: &ValidatedCluster, parts: PodParts<'_>) -> Pod {
    let PodParts {
        role,
        name,
        labels: operator_labels,
        mut env,
        ports: (grpc_port, http_port),
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
        ports: Some(vec![
            container_port("grpc", grpc_port),
            container_port("http", http_port),
        ]),
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
        labels.insert(LABEL_TEMPLATE_HASH.to_owned(), hash);
    }
    pod
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

fn pod_security_context(user: Option<&PodSecurityContext>) -> PodSecurityContext {
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

fn container_security_context() -> SecurityContext {
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

fn literal_env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.to_owned()),
        ..EnvVar::default()
    }
}

fn field_env(name: &str, field_path: &str) -> EnvVar {
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
    use crate::{crd::ComputeCluster, validation::validate};

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

        let pod_labels = head_pod(&cluster).metadata.labels.expect("labels");
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
        let pod = head_pod(&cluster);
        assert_eq!(pod.metadata.name.as_deref(), Some("demo-head"));
        assert_owned_by_demo(&pod.metadata);
        assert_hardened(&pod);
        assert_eq!(literal(&pod, "FLOTILLA_ROLE"), Some("head"));
        assert_eq!(literal(&pod, "FLOTILLA_CLUSTER"), Some("demo"));
        assert_eq!(literal(&pod, "FLOTILLA_NAMESPACE"), Some("science"));
        assert_eq!(field_ref(&pod, "FLOTILLA_BIND"), Some("status.podIP"));
        assert!(env(&pod, "FLOTILLA_HEAD").is_none());
        let ports: Vec<_> = container(&pod)
            .ports
            .iter()
            .flatten()
            .map(|p| (p.name.as_deref(), p.container_port))
            .collect();
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
        let ports: Vec<_> = container(&pod)
            .ports
            .iter()
            .flatten()
            .map(|p| p.container_port)
            .collect();
        assert_eq!(ports, vec![7402, 7403]);
        assert_eq!(container(&pod).args, Some(vec!["worker".to_owned()]));
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
        let hash = template_hash_of(&first).expect("hash label");
        assert_eq!(hash.len(), 16);
        assert_eq!(template_hash_of(&second), Some(hash.clone()));
        assert_eq!(worker_template_hash(&cluster, group), hash);

        let mut changed = cluster.clone();
        changed.image = "registry.example/flotilla:1.1".into();
        let changed_group = changed.group("cpu").expect("group");
        assert_ne!(worker_template_hash(&changed, changed_group), hash);
        assert_ne!(head_template_hash(&changed), head_template_hash(&cluster));

        let other_group = cluster.group("plain").expect("group");
        assert_ne!(worker_template_hash(&cluster, other_group), hash);
    }
}
