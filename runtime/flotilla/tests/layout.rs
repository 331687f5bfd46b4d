//! The crate's import rules hold: each top-level module of `src/` uses only the modules its row
//! in the table of `src/lib.rs` allows, so the modules form no cycle. Also checks that every
//! top-level file and folder opens with a doc line saying its job.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

/// Each module and the modules it may import (the table in `src/lib.rs`).
const RULES: &[(&str, &[&str])] = &[
    ("collections", &["driver", "registry", "codec", "error"]),
    (
        "process",
        &["local", "head", "worker", "driver", "net", "error"],
    ),
    (
        "local",
        &[
            "admin",
            "driver",
            "head",
            "worker",
            "objects",
            "private_fs",
            "error",
        ],
    ),
    (
        "worker",
        &[
            "registry", "driver", "objects", "net", "metrics", "codec", "error",
        ],
    ),
    ("head", &["net", "metrics", "error"]),
    ("admin", &["net", "error"]),
    ("builtins", &["driver", "codec", "error"]),
    ("registry", &["driver", "error"]),
    ("driver", &["objects", "net", "codec", "error"]),
    ("objects", &["net", "private_fs", "error"]),
    ("metrics", &[]),
    ("net", &["error"]),
    ("private_fs", &[]),
    ("codec", &["error"]),
    ("error", &[]),
];

/// Root re-exports, and the module each comes from.
const REEXPORTS: &[(&str, &str)] = &[
    ("Blob", "codec"),
    ("Array", "collections"),
    ("Bag", "collections"),
    ("DataFrame", "collections"),
    ("Delayed", "collections"),
    // Blocks on a future of the runtime, from synchronous code.
    ("block_on", "driver"),
    ("Runtime", "driver"),
    ("ObjectRef", "driver"),
    ("IntoArg", "driver"),
    ("ActorHandle", "driver"),
    ("ActorOptions", "driver"),
    ("TaskOptions", "driver"),
    ("Error", "error"),
    ("ErrorKind", "error"),
    ("Result", "error"),
    // The attribute macros expand to code that uses the driver, the registry and the codec.
    ("remote", "driver"),
    ("actor", "driver"),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module names `code` refers to through `crate::`.
fn crate_refs(code: &str) -> BTreeSet<String> {
    let code: String = code
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut refs = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a, b::{c, d}, e}`: the names at the first level.
            let mut depth = 1;
            let mut name = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 1 => {
                        refs.insert(first_segment(&name));
                        name.clear();
                        continue;
                    }
                    _ => {}
                }
                if depth == 0 {
                    refs.insert(first_segment(&name));
                    break;
                }
                if depth == 1 {
                    name.push(c);
                }
            }
        } else {
            refs.insert(first_segment(rest));
        }
    }
    refs.remove("");
    refs
}

fn first_segment(path: &str) -> String {
    path.trim()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

#[test]
fn modules_import_only_what_the_rules_allow() {
    let rules: BTreeMap<&str, BTreeSet<&str>> = RULES
        .iter()
        .map(|(m, deps)| (*m, deps.iter().copied().collect()))
        .collect();
    let reexports: BTreeMap<&str, &str> = REEXPORTS.iter().copied().collect();
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut broken = Vec::new();
    for file in files {
        let relative = file.strip_prefix(src()).expect("under src");
        let top = relative
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .expect("a file name")
            .trim_end_matches(".rs")
            .to_string();
        if top == "lib" || top == "bin" {
            continue;
        }
        let allowed = rules
            .get(top.as_str())
            .unwrap_or_else(|| panic!("module {top} has no row in RULES (and src/lib.rs)"));
        let code = std::fs::read_to_string(&file).expect("readable source");
        for r in crate_refs(&code) {
            let module = reexports.get(r.as_str()).copied().unwrap_or(r.as_str());
            if module != top && module != "__private" && !allowed.contains(module) {
                broken.push(format!("{} uses crate::{r} ({module})", relative.display()));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "imports against the rules:\n{}",
        broken.join("\n")
    );
}

#[test]
fn the_rules_form_no_cycle() {
    // Each module may import only modules listed after it: a topological order.
    for (i, (module, deps)) in RULES.iter().enumerate() {
        for dep in *deps {
            let j = RULES
                .iter()
                .position(|(m, _)| m == dep)
                .unwrap_or_else(|| panic!("{module} names unknown module {dep}"));
            assert!(j > i, "{module} may import {dep}, which is listed above it");
        }
    }
}

#[test]
fn every_top_level_module_says_its_job() {
    for entry in std::fs::read_dir(src()).expect("src is readable") {
        let path = entry.expect("a directory entry").path();
        let file = if path.is_dir() {
            path.join("mod.rs")
        } else {
            path.clone()
        };
        if path.file_name().is_some_and(|n| n == "bin") {
            continue;
        }
        let code = std::fs::read_to_string(&file).expect("readable source");
        assert!(
            code.starts_with("//! "),
            "{} does not open with a `//!` line saying its job",
            file.display()
        );
    }
}
