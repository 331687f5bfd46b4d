//! The Kubernetes an end-to-end test runs on: the fake API server, or, with
//! `USE_EXISTING_CLUSTER=true` and `KUBECONFIG` (the envtest convention), an existing cluster
//! (each test in a namespace of its own, deleted when the test ends); the operator binary and the
//! process kubelet started against it.

use std::{
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use flotilla_testenv::{
    apiserver::FakeApiServer,
    kubelet::{ImageMapping, KubeletConfig, ProcessKubelet},
};
use k8s_openapi::api::core::v1::{Node, Pod, Secret};
use kube::{api::ListParams, config::Kubeconfig, Api, Client, Config};

use super::{bin_dir, repo};

/// `USE_EXISTING_CLUSTER=true` with `KUBECONFIG`: the cluster to test against instead of the
/// fake API server.
pub fn existing_cluster() -> Option<PathBuf> {
    if std::env::var("USE_EXISTING_CLUSTER").ok()? != "true" {
        return None;
    }
    std::env::var_os("KUBECONFIG").map(PathBuf::from)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A process killed (SIGTERM, then SIGKILL) when dropped.
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let pid = self.0.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Deletes a test's namespace on an existing cluster (with everything in it) and the Node its
/// process kubelet registered, when the test ends, also by a panic.
struct Cleanup {
    kubeconfig: PathBuf,
    ns: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for args in [
            [
                "delete",
                "namespace",
                &self.ns,
                "--wait=false",
                "--ignore-not-found",
            ],
            [
                "delete",
                "node",
                &self.ns,
                "--wait=false",
                "--ignore-not-found",
            ],
        ] {
            let _ = Command::new("kubectl")
                .args(args)
                .env("KUBECONFIG", &self.kubeconfig)
                .stdout(Stdio::null())
                .status();
        }
    }
}

/// The Kubernetes a test runs on: the fake API server (a new one per test), or an existing
/// cluster; its kubeconfig (whose context is the test's namespace), and a scratch directory.
pub struct Kube {
    pub api: Option<FakeApiServer>,
    pub kubeconfig: PathBuf,
    /// Where the test works: `default` on its own fake server; a fresh namespace on an existing
    /// cluster.
    pub ns: String,
    /// Declared before `dir`, so it runs while the kubeconfig is still there.
    _cleanup: Option<Cleanup>,
    pub dir: tempfile::TempDir,
}

impl Kube {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let kubeconfig = dir.path().join("kubeconfig");
        let (api, ns, cleanup) = match existing_cluster() {
            None => {
                let api = FakeApiServer::start()
                    .await
                    .expect("fake API server starts");
                api.write_kubeconfig(&kubeconfig)
                    .expect("kubeconfig written");
                (Some(api), "default".to_owned(), None)
            }
            Some(given) => {
                let ns = format!("flotilla-e2e-{:08x}", rand::random::<u32>());
                // The given kubeconfig's current context, in a copy whose namespace is the test's.
                let view = Command::new("kubectl")
                    .args(["config", "view", "--raw", "--minify", "--flatten"])
                    .env("KUBECONFIG", &given)
                    .output()
                    .expect("kubectl runs");
                assert!(view.status.success(), "kubectl config view of {given:?}");
                std::fs::write(&kubeconfig, &view.stdout).expect("kubeconfig written");
                let cleanup = Cleanup {
                    kubeconfig: kubeconfig.clone(),
                    ns: ns.clone(),
                };
                for args in [
                    vec!["create", "namespace", &ns],
                    vec!["config", "set-context", "--current", "--namespace", &ns],
                ] {
                    let status = Command::new("kubectl")
                        .args(&args)
                        .env("KUBECONFIG", &kubeconfig)
                        .stdout(Stdio::null())
                        .status()
                        .expect("kubectl runs");
                    assert!(status.success(), "kubectl {args:?}");
                }
                (None, ns, Some(cleanup))
            }
        };
        let kube = Kube {
            api,
            kubeconfig,
            ns,
            _cleanup: cleanup,
            dir,
        };
        kube.kubectl_ok(&["apply", "-f", &repo().join("crds").display().to_string()]);
        kube
    }

    pub async fn client(&self) -> Client {
        match &self.api {
            Some(api) => api.client().await.expect("kube client"),
            None => {
                let kubeconfig = Kubeconfig::read_from(&self.kubeconfig).expect("kubeconfig");
                let config = Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                    .await
                    .expect("kube config");
                Client::try_from(config).expect("kube client")
            }
        }
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .output()
            .expect("kubectl runs")
    }

    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl apply -f -` of `yaml`: whether it succeeded, and what kubectl said.
    pub fn apply(&self, yaml: &str) -> (bool, String) {
        let mut apply = Command::new("kubectl")
            .args(["apply", "-f", "-"])
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl runs");
        std::io::Write::write_all(&mut apply.stdin.take().expect("stdin"), yaml.as_bytes())
            .expect("manifest written");
        let out = apply.wait_with_output().expect("kubectl ends");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// Starts the operator binary; returns it and its HTTP address.
    pub fn operator(&self, name: &str, extra: &[&str]) -> (Process, String) {
        let http = format!("127.0.0.1:{}", free_port());
        let log = std::fs::File::create(self.dir.path().join(format!("{name}.log"))).expect("log");
        // On a shared cluster, this test's operator looks after this test's namespace only.
        let only_ours = match self.api {
            None => vec!["--namespaces", self.ns.as_str()],
            Some(_) => vec![],
        };
        let child = Command::new(env!("CARGO_BIN_EXE_flotilla-operator"))
            .args(["run", "--http-bind", &http, "--identity", name])
            .args(only_ours)
            .args(extra)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("RUST_LOG", "info,kube=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("operator starts");
        (Process(child), http)
    }

    /// The process kubelet, unless the test runs on an existing cluster with nodes of its own
    /// (which must then be able to pull the image `flotilla`).
    pub async fn kubelet(&self) -> Option<ProcessKubelet> {
        let node_name = match self.api {
            Some(_) => "local".to_owned(),
            None => {
                let nodes: Api<Node> = Api::all(self.client().await);
                let listed = nodes
                    .list(&ListParams::default())
                    .await
                    .expect("list nodes");
                if !listed.items.is_empty() {
                    println!("the cluster has nodes of its own: pods run there, not as processes");
                    return None;
                }
                self.ns.clone()
            }
        };
        let config = KubeletConfig {
            node_name,
            images: vec![ImageMapping {
                image: "flotilla".into(),
                bin_dir: bin_dir(),
                entrypoint: Some(bin_dir().join("flotilla")),
            }],
            log_dir: self.dir.path().join("pods"),
            restart_backoff: (Duration::from_millis(100), Duration::from_secs(2)),
            schedule: true,
        };
        let kubelet = ProcessKubelet::start(self.client().await, config)
            .await
            .expect("kubelet starts");
        Some(kubelet)
    }

    pub fn operator_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }
}

/// The head pod's IP and the cluster token.
pub async fn head_of(client: &Client, cluster: &str) -> Option<(String, String)> {
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let head = pods.get_opt(&format!("{cluster}-head")).await.ok()??;
    let ip = head.status?.pod_ip?;
    let secrets: Api<Secret> = Api::default_namespaced(client.clone());
    let secret = secrets.get_opt(&format!("{cluster}-token")).await.ok()??;
    let token = String::from_utf8(secret.data?.get("token")?.0.clone()).ok()?;
    Some((ip, token))
}
