//! Startup, readiness and liveness probes.
//!
//! Probe timings are honoured within limits suited to tests: `initialDelaySeconds` is capped at
//! 2 s, `periodSeconds` at 1 s, `timeoutSeconds` at 2 s; until a container has first become
//! ready its readiness probe runs every 100 ms, so pods turn Ready as soon as they can.
//! `failureThreshold` and `successThreshold` are honoured as written. httpGet (plain HTTP only),
//! tcpSocket and exec probes are supported; a gRPC or HTTPS probe always fails with a message
//! saying so.

use std::{net::Ipv4Addr, path::PathBuf, time::Duration};

use k8s_openapi::{
    api::core::v1::{Container, ContainerPort, HTTPGetAction, Probe},
    apimachinery::pkg::util::intstr::IntOrString,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    process::Command,
    sync::mpsc,
    task::JoinHandle,
    time::{sleep, timeout},
};

use super::{command::resolve_command, ImageMapping};

const MAX_INITIAL_DELAY: Duration = Duration::from_secs(2);
const MAX_PERIOD: Duration = Duration::from_secs(1);
const MAX_TIMEOUT: Duration = Duration::from_secs(2);
const UNTIL_READY_PERIOD: Duration = Duration::from_millis(100);

/// What probing found out about a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeEvent {
    /// The startup probe succeeded (or there is none).
    Started,
    /// Readiness changed.
    Ready(bool),
    /// The startup or liveness probe failed `failureThreshold` times: restart the container.
    Unhealthy(String),
}

/// A [`ProbeEvent`] of one run of one container.
#[derive(Debug)]
pub struct ProbeReport {
    /// The container's position in the pod (init containers first).
    pub position: usize,
    /// Which start of the container the report is about.
    pub generation: u64,
    pub event: ProbeEvent,
}

/// Where and how a container is probed.
#[derive(Debug, Clone)]
pub struct ProbeTarget {
    pub pod_ip: Ipv4Addr,
    pub ports: Vec<ContainerPort>,
    /// For exec probes: the image, its mapping, the container's environment and working dir.
    pub image: String,
    pub mapping: ImageMapping,
    pub env: Vec<(String, String)>,
    pub workdir: PathBuf,
}

/// Starts probing a running container; the task ends when aborted or after reporting
/// [`ProbeEvent::Unhealthy`].
pub fn spawn_prober(
    container: &Container,
    target: ProbeTarget,
    position: usize,
    generation: u64,
    reports: mpsc::UnboundedSender<ProbeReport>,
) -> JoinHandle<()> {
    let startup = container.startup_probe.clone();
    let readiness = container.readiness_probe.clone();
    let liveness = container.liveness_probe.clone();
    let report = move |event| {
        // The pod worker stops listening only when it is gone, and then nobody needs the news.
        let _ = reports.send(ProbeReport {
            position,
            generation,
            event,
        });
    };
    tokio::spawn(async move {
        if let Some(probe) = &startup {
            if let Err(message) = until_failed_or_passed(probe, &target, "Startup").await {
                report(ProbeEvent::Unhealthy(message));
                return;
            }
        }
        report(ProbeEvent::Started);
        let readiness = async {
            match &readiness {
                Some(probe) => watch_readiness(probe, &target, &report).await,
                None => report(ProbeEvent::Ready(true)),
            }
        };
        match &liveness {
            // Readiness runs until the liveness probe fails, which ends the prober.
            Some(probe) => {
                let readiness = async {
                    readiness.await;
                    std::future::pending::<()>().await;
                };
                tokio::select! {
                    () = readiness => {}
                    message = watch_liveness(probe, &target) => report(ProbeEvent::Unhealthy(message)),
                }
            }
            None => readiness.await,
        }
    })
}

fn seconds(value: Option<i32>, default: u64) -> Duration {
    Duration::from_secs(value.and_then(|v| u64::try_from(v).ok()).unwrap_or(default))
}

fn initial_delay(probe: &Probe) -> Duration {
    seconds(probe.initial_delay_seconds, 0).min(MAX_INITIAL_DELAY)
}

fn period(probe: &Probe) -> Duration {
    seconds(probe.period_seconds, 10).clamp(UNTIL_READY_PERIOD, MAX_PERIOD)
}

fn threshold(value: Option<i32>, default: u32) -> u32 {
    value
        .and_then(|v| u32::try_from(v).ok())
        .filter(|v| *v > 0)
        .unwrap_or(default)
}

/// Runs a startup probe until it passes (`Ok`) or fails `failureThreshold` times in a row.
async fn until_failed_or_passed(
    probe: &Probe,
    target: &ProbeTarget,
    kind: &str,
) -> Result<(), String> {
    sleep(initial_delay(probe)).await;
    let failure_threshold = threshold(probe.failure_threshold, 3);
    let mut failures = 0;
    loop {
        match run_probe(probe, target).await {
            Ok(()) => return Ok(()),
            Err(message) => {
                failures += 1;
                if failures >= failure_threshold {
                    return Err(format!("{kind} probe failed: {message}"));
                }
            }
        }
        sleep(period(probe)).await;
    }
}

/// Runs a liveness probe until it fails `failureThreshold` times in a row; returns why.
async fn watch_liveness(probe: &Probe, target: &ProbeTarget) -> String {
    sleep(initial_delay(probe)).await;
    let failure_threshold = threshold(probe.failure_threshold, 3);
    let mut failures = 0;
    loop {
        match run_probe(probe, target).await {
            Ok(()) => failures = 0,
            Err(message) => {
                failures += 1;
                if failures >= failure_threshold {
                    return format!("Liveness probe failed: {message}");
                }
            }
        }
        sleep(period(probe)).await;
    }
}

/// Runs a readiness probe forever, reporting each change.
async fn watch_readiness(probe: &Probe, target: &ProbeTarget, report: &impl Fn(ProbeEvent)) {
    sleep(initial_delay(probe)).await;
    let failure_threshold = threshold(probe.failure_threshold, 3);
    let success_threshold = threshold(probe.success_threshold, 1);
    let (mut ready, mut ever_ready) = (false, false);
    let (mut successes, mut failures) = (0, 0);
    loop {
        match run_probe(probe, target).await {
            Ok(()) => {
                (successes, failures) = (successes + 1, 0);
                if !ready && successes >= success_threshold {
                    (ready, ever_ready) = (true, true);
                    report(ProbeEvent::Ready(true));
                }
            }
            Err(message) => {
                (successes, failures) = (0, failures + 1);
                if ready && failures >= failure_threshold {
                    ready = false;
                    tracing::debug!(%message, "readiness probe failed");
                    report(ProbeEvent::Ready(false));
                }
            }
        }
        sleep(if ever_ready {
            period(probe)
        } else {
            UNTIL_READY_PERIOD
        })
        .await;
    }
}

/// One probe attempt.
async fn run_probe(probe: &Probe, target: &ProbeTarget) -> Result<(), String> {
    let limit = seconds(probe.timeout_seconds, 1).clamp(Duration::from_millis(100), MAX_TIMEOUT);
    let attempt = async {
        if let Some(action) = &probe.http_get {
            http_get(action, target).await
        } else if let Some(action) = &probe.tcp_socket {
            let host = action
                .host
                .clone()
                .unwrap_or_else(|| target.pod_ip.to_string());
            let port = resolve_port(&action.port, &target.ports)?;
            TcpStream::connect((host.as_str(), port))
                .await
                .map(drop)
                .map_err(|err| format!("dial tcp {host}:{port}: {err}"))
        } else if let Some(action) = &probe.exec {
            exec(action.command.as_deref().unwrap_or_default(), target).await
        } else if probe.grpc.is_some() {
            Err("gRPC probes are not supported by the process kubelet".to_owned())
        } else {
            Err("the probe has no handler".to_owned())
        }
    };
    timeout(limit, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("timed out after {limit:?}")))
}

fn resolve_port(port: &IntOrString, ports: &[ContainerPort]) -> Result<u16, String> {
    let number = match port {
        IntOrString::Int(number) => Some(*number),
        IntOrString::String(name) => ports
            .iter()
            .find(|port| port.name.as_deref() == Some(name.as_str()))
            .map(|port| port.container_port)
            .or_else(|| name.parse().ok()),
    };
    number
        .and_then(|number| u16::try_from(number).ok())
        .ok_or_else(|| format!("port {port:?} is not a container port"))
}

async fn http_get(action: &HTTPGetAction, target: &ProbeTarget) -> Result<(), String> {
    if action
        .scheme
        .as_deref()
        .is_some_and(|s| !s.eq_ignore_ascii_case("HTTP"))
    {
        return Err("HTTPS probes are not supported by the process kubelet".to_owned());
    }
    let host = action
        .host
        .clone()
        .unwrap_or_else(|| target.pod_ip.to_string());
    let port = resolve_port(&action.port, &target.ports)?;
    let path = action
        .path
        .as_deref()
        .filter(|p| !p.is_empty())
        .unwrap_or("/");
    let url = format!("http://{host}:{port}{path}");
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.37\r\n\
         Accept: */*\r\nConnection: close\r\n"
    );
    for header in action.http_headers.iter().flatten() {
        request.push_str(&format!("{}: {}\r\n", header.name, header.value));
    }
    request.push_str("\r\n");
    let mut stream = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|err| format!("Get \"{url}\": dial tcp {host}:{port}: {err}"))?;
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|err| format!("Get \"{url}\": {err}"))?;
    let mut head = Vec::with_capacity(64);
    let mut buf = [0u8; 256];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 1024 {
        let read = stream
            .read(&mut buf)
            .await
            .map_err(|err| format!("Get \"{url}\": {err}"))?;
        if read == 0 {
            break;
        }
        head.extend_from_slice(&buf[..read]);
    }
    let line = String::from_utf8_lossy(&head);
    let code: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("Get \"{url}\": malformed HTTP response"))?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {code}"))
    }
}

async fn exec(command: &[String], target: &ProbeTarget) -> Result<(), String> {
    let (program, args) = resolve_command(
        &target.mapping,
        &target.image,
        Some(command),
        None,
        &target.env,
    )
    .map_err(|err| err.to_string())?;
    let output = Command::new(program)
        .args(args)
        .env_clear()
        .envs(target.env.iter().map(|(key, value)| (key, value)))
        .current_dir(&target.workdir)
        .process_group(0)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|err| err.to_string())?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "command {command:?} exited with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stdout).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_resolve_by_number_or_name() {
        let ports = vec![ContainerPort {
            name: Some("http".into()),
            container_port: 7401,
            ..ContainerPort::default()
        }];
        assert_eq!(resolve_port(&IntOrString::Int(80), &ports), Ok(80));
        assert_eq!(
            resolve_port(&IntOrString::String("http".into()), &ports),
            Ok(7401)
        );
        assert_eq!(
            resolve_port(&IntOrString::String("8080".into()), &ports),
            Ok(8080)
        );
        assert!(resolve_port(&IntOrString::String("grpc".into()), &ports).is_err());
        assert!(resolve_port(&IntOrString::Int(70000), &ports).is_err());
    }

    #[test]
    fn timings_are_capped_for_tests() {
        let probe = Probe {
            initial_delay_seconds: Some(30),
            period_seconds: Some(10),
            ..Probe::default()
        };
        assert_eq!(initial_delay(&probe), MAX_INITIAL_DELAY);
        assert_eq!(period(&probe), MAX_PERIOD);
        assert_eq!(initial_delay(&Probe::default()), Duration::ZERO);
        assert_eq!(threshold(Some(0), 3), 3);
        assert_eq!(threshold(Some(5), 3), 5);
    }
}
