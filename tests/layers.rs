//! The layer rules of `src/lib.rs`, checked on the source: a lower layer never imports a
//! higher one. Each rule lists what a module must not name as `crate::<module>` (the code
//! base writes one path per `use`, never `use crate::{a, b}`); test modules
//! (`#[cfg(test)] mod tests`) and `//` comments are left out.

use std::path::{Path, PathBuf};

/// What the small modules the whole data plane shares (per-thread header maps, the
/// poll's clock) must not import: any layer that uses them.
const SHARED_BY_THE_DATA_PLANE: &[&str] = &[
    "admin",
    "app",
    "control",
    "proxy",
    "upstream",
    "cache",
    "config",
    "balancer",
    "metrics",
    "supervisor",
];

/// (module directory or file under `src/`, modules it must not import)
const RULES: &[(&str, &[&str])] = &[
    (
        "proxy",
        &["admin", "app", "control", "demo", "metrics", "supervisor"],
    ),
    (
        "balancer",
        &[
            "admin",
            "app",
            "control",
            "proxy",
            "cache",
            "metrics",
            "supervisor",
        ],
    ),
    (
        "upstream",
        &[
            "admin",
            "app",
            "control",
            "proxy",
            "cache",
            "metrics",
            "supervisor",
        ],
    ),
    (
        "cache",
        &[
            "admin", "app", "control", "proxy", "upstream", "balancer", "metrics",
        ],
    ),
    (
        "config",
        &[
            "admin", "app", "control", "proxy", "upstream", "cache", "balancer", "metrics", "tls",
        ],
    ),
    (
        "tls.rs",
        &[
            "admin", "app", "control", "proxy", "upstream", "cache", "balancer", "metrics",
        ],
    ),
    (
        "loadtest",
        &[
            "admin", "app", "control", "proxy", "upstream", "cache", "balancer",
        ],
    ),
    (
        "control",
        &["admin", "app", "demo", "supervisor", "metrics"],
    ),
    (
        "telemetry",
        &[
            "admin",
            "app",
            "control",
            "proxy",
            "upstream",
            "cache",
            "balancer",
            "metrics",
            "supervisor",
        ],
    ),
    ("supervisor", &["admin", "app", "demo", "metrics"]),
    ("metrics.rs", &["admin", "app", "demo", "supervisor"]),
    ("admin", &["app", "demo"]),
    (
        "registry.rs",
        &["admin", "app", "control", "proxy", "supervisor", "metrics"],
    ),
    (
        "stable_hash.rs",
        &[
            "admin", "app", "control", "proxy", "upstream", "cache", "config",
        ],
    ),
    ("header_maps.rs", SHARED_BY_THE_DATA_PLANE),
    ("clock.rs", SHARED_BY_THE_DATA_PLANE),
    (
        "chart.rs",
        &[
            "admin", "app", "control", "proxy", "upstream", "cache", "config",
        ],
    ),
];

fn rust_files(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            rust_files(&entry.unwrap().path(), out);
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        out.push(path.to_owned());
    }
}

/// The file's code without its test module and line comments.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => &text[..],
    };
    text.lines()
        .map(|line| line.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn lower_layers_never_import_higher_ones() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut broken = Vec::new();
    for (module, forbidden) in RULES {
        let mut files = Vec::new();
        rust_files(&src.join(module), &mut files);
        assert!(!files.is_empty(), "src/{module} has no Rust files");
        for file in files {
            let code = code(&file);
            for higher in *forbidden {
                if code.contains(&format!("crate::{higher}::"))
                    || code.contains(&format!("crate::{higher};"))
                    || code.contains(&format!("crate::{higher}::{{"))
                {
                    broken.push(format!(
                        "{} imports crate::{higher}",
                        file.strip_prefix(&src).unwrap().display()
                    ));
                }
            }
        }
    }
    assert!(
        broken.is_empty(),
        "layer rules broken:\n{}",
        broken.join("\n")
    );
}
