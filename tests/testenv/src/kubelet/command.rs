//! What a container runs: the image's stand-in, the argv, `$(VAR)` expansion.

use std::path::{Path, PathBuf};

use super::ImageMapping;

/// Finds the mapping for an image reference: an exact match first, then a mapping that names the
/// image's repository without tag or digest (`flotilla` stands for `flotilla:latest` and
/// `flotilla@sha256:…`).
pub fn find_image<'a>(images: &'a [ImageMapping], image: &str) -> Option<&'a ImageMapping> {
    images
        .iter()
        .find(|mapping| mapping.image == image)
        .or_else(|| {
            let repository = repository_of(image);
            images.iter().find(|mapping| mapping.image == repository)
        })
}

/// The repository part of an image reference: without `@digest` and without `:tag` (a colon
/// before the last `/` belongs to a registry port).
fn repository_of(image: &str) -> &str {
    let image = image.split_once('@').map_or(image, |(name, _)| name);
    match (image.rfind(':'), image.rfind('/')) {
        (Some(colon), Some(slash)) if colon < slash => image,
        (Some(colon), _) => &image[..colon],
        (None, _) => image,
    }
}

/// Why a container's command cannot be resolved; shown as the container's start error.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CommandError {
    #[error("no command specified: the container has no command and image {image:?} has no entrypoint in the kubelet's image map")]
    NoCommand { image: String },
    #[error("exec: {name:?}: executable file not found in {}", bin_dir.display())]
    NotFound { name: String, bin_dir: PathBuf },
}

/// The program and arguments a container runs, as a container runtime resolves them: the
/// container's `command` (or else the image's entrypoint) followed by its `args`, after
/// `$(VAR)` expansion against the container's environment; a program name without a `/` is
/// looked up in the image's `bin_dir`.
pub fn resolve_command(
    mapping: &ImageMapping,
    image: &str,
    command: Option<&[String]>,
    args: Option<&[String]>,
    env: &[(String, String)],
) -> Result<(PathBuf, Vec<String>), CommandError> {
    let mut argv: Vec<String> = match command {
        Some(command) if !command.is_empty() => {
            command.iter().map(|part| expand(part, env)).collect()
        }
        _ => match &mapping.entrypoint {
            Some(entrypoint) => vec![entrypoint.to_string_lossy().into_owned()],
            None => {
                return Err(CommandError::NoCommand {
                    image: image.to_owned(),
                })
            }
        },
    };
    argv.extend(args.into_iter().flatten().map(|arg| expand(arg, env)));
    let program = argv.remove(0);
    let path = lookup(&program, &mapping.bin_dir).ok_or_else(|| CommandError::NotFound {
        name: program.clone(),
        bin_dir: mapping.bin_dir.clone(),
    })?;
    Ok((path, argv))
}

/// An absolute path is taken as is; anything else is looked up in `bin_dir`, the image's `PATH`.
fn lookup(program: &str, bin_dir: &Path) -> Option<PathBuf> {
    let path = Path::new(program);
    let path = if path.is_absolute() {
        path.to_path_buf()
    } else {
        bin_dir.join(path)
    };
    is_executable(&path).then_some(path)
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// Kubernetes' `$(VAR)` expansion: `$(NAME)` becomes the value of `NAME` if `env` defines it and
/// stays as written otherwise; `$$` is an escaped `$`. Later definitions win, as in a container.
pub fn expand(input: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let after = &rest[dollar + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some((name, tail)) = after
            .strip_prefix('(')
            .and_then(|inner| inner.split_once(')'))
        {
            match env.iter().rev().find(|(key, _)| key == name) {
                Some((_, value)) => out.push_str(value),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = tail;
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(image: &str, bin_dir: &str, entrypoint: Option<&str>) -> ImageMapping {
        ImageMapping {
            image: image.into(),
            bin_dir: bin_dir.into(),
            entrypoint: entrypoint.map(PathBuf::from),
        }
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn images_match_exactly_or_by_repository() {
        let images = [
            mapping("flotilla", "/a", None),
            mapping("busybox:1.36", "/b", None),
            mapping("registry:5000/team/app", "/c", None),
        ];
        let dir = |image| find_image(&images, image).map(|m| m.bin_dir.clone());
        assert_eq!(dir("flotilla"), Some("/a".into()));
        assert_eq!(dir("flotilla:latest"), Some("/a".into()));
        assert_eq!(dir("flotilla@sha256:00ff"), Some("/a".into()));
        assert_eq!(dir("busybox:1.36"), Some("/b".into()));
        assert_eq!(dir("busybox"), None);
        assert_eq!(dir("busybox:1.37"), None);
        assert_eq!(dir("registry:5000/team/app:v2"), Some("/c".into()));
        assert_eq!(dir("registry:5000/team/other"), None);
        assert_eq!(dir("other/flotilla"), None);
    }

    #[test]
    fn expansion_follows_kubernetes() {
        let vars = env(&[("A", "1"), ("B", "two"), ("A", "3")]);
        assert_eq!(expand("$(A)-$(B)", &vars), "3-two");
        assert_eq!(
            expand("$(MISSING) $$(A) $$ $", &vars),
            "$(MISSING) $(A) $ $"
        );
        assert_eq!(expand("$(A", &vars), "$(A");
        assert_eq!(expand("plain", &vars), "plain");
    }

    #[test]
    fn commands_resolve_in_the_bin_dir_or_the_entrypoint() {
        let sh = mapping("busybox", "/bin", None);
        let vars = env(&[("MSG", "hi")]);
        let command = ["sh".to_owned(), "-c".to_owned()];
        let args = ["echo $(MSG)".to_owned()];
        assert_eq!(
            resolve_command(&sh, "busybox", Some(&command), Some(&args), &vars),
            Ok((
                PathBuf::from("/bin/sh"),
                vec!["-c".into(), "echo hi".into()]
            ))
        );
        let absolute = ["/bin/true".to_owned()];
        assert_eq!(
            resolve_command(&sh, "busybox", Some(&absolute), None, &vars),
            Ok((PathBuf::from("/bin/true"), vec![]))
        );
        assert_eq!(
            resolve_command(&sh, "busybox", None, Some(&args), &vars),
            Err(CommandError::NoCommand {
                image: "busybox".into()
            })
        );
        let with_entrypoint = mapping("busybox", "/bin", Some("sh"));
        assert_eq!(
            resolve_command(&with_entrypoint, "busybox", None, Some(&args), &vars),
            Ok((PathBuf::from("/bin/sh"), vec!["echo hi".into()]))
        );
        let missing = ["no-such-program".to_owned()];
        let err = resolve_command(&sh, "busybox", Some(&missing), None, &vars).unwrap_err();
        assert_eq!(
            err.to_string(),
            "exec: \"no-such-program\": executable file not found in /bin"
        );
    }
}
