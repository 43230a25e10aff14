//! The code's shape, as `src/lib.rs` and the README state it: dependencies point one way
//! (only `store` names `object_store`; `store` knows nothing above it; `fs` knows nothing of
//! FUSE, gRPC, Kubernetes or the mounter), every file says what it owns in a `//!` line,
//! and no file grows past 800 lines.

use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn files_under(rel: &str) -> Vec<(String, String)> {
    let mut paths = Vec::new();
    rust_files(&Path::new(ROOT).join(rel), &mut paths);
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p.strip_prefix(ROOT).unwrap().display().to_string(), text)
        })
        .collect()
}

/// Whether the code of `text` (comments dropped) mentions `needle`, with grouped imports
/// (`use crate::{fs, store::Bucket}`, across lines too) read as the paths they name.
fn mentions(text: &str, needle: &str) -> bool {
    let code: String = text
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join(" ");
    code.contains(needle) || expand_groups(&code).iter().any(|p| p.contains(needle))
}

/// Every path a `prefix::{a, b::{c, d}}` group names: `prefix::a`, `prefix::b::c`, ….
fn expand_groups(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("::{") {
        // The path before the brace, back to the last character no path holds.
        let start = rest[..at]
            .rfind(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .map_or(0, |i| i + 1);
        let prefix = &rest[start..at];
        let body_start = at + 3;
        let mut depth = 1;
        let mut end = body_start;
        for (i, c) in rest[body_start..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                _ => {}
            }
            if depth == 0 {
                end = body_start + i;
                break;
            }
        }
        if depth != 0 {
            break;
        }
        let body = &rest[body_start..end];
        let mut part = String::new();
        let mut depth = 0;
        for c in body.chars().chain(std::iter::once(',')) {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                _ => {}
            }
            if c == ',' && depth == 0 {
                let item = part.trim();
                if !item.is_empty() {
                    let path = format!("{prefix}::{item}");
                    out.extend(expand_groups(&path));
                    out.push(path);
                }
                part.clear();
            } else {
                part.push(c);
            }
        }
        rest = &rest[end + 1..];
    }
    out
}

#[test]
fn dependencies_point_one_way() {
    let rules: &[(&str, &[&str])] = &[
        (
            "src/fs",
            &[
                "object_store",
                "crate::fuse",
                "crate::csi",
                "crate::mounter",
                "fuser",
                "tonic",
                "kube",
            ],
        ),
        (
            "src/csi",
            &["object_store", "crate::fs", "crate::fuse", "fuser"],
        ),
        (
            "src/fuse",
            &[
                "object_store",
                "crate::csi",
                "crate::mounter",
                "crate::store",
            ],
        ),
        (
            "src/mounter",
            &[
                "object_store",
                "crate::fs",
                "crate::fuse",
                "crate::csi",
                "crate::store",
            ],
        ),
        (
            "src/options",
            &[
                "object_store",
                "crate::fs",
                "crate::fuse",
                "crate::csi",
                "crate::mounter",
            ],
        ),
        ("src/cli", &["object_store"]),
        (
            "src/store",
            &[
                "crate::fs",
                "crate::fuse",
                "crate::csi",
                "crate::mounter",
                "crate::options",
                "fuser",
                "tonic",
                "kube",
            ],
        ),
    ];
    let mut broken = Vec::new();
    for (dir, banned) in rules {
        for (path, text) in files_under(dir) {
            for b in *banned {
                if mentions(&text, b) {
                    broken.push(format!("{path} names {b}"));
                }
            }
        }
    }
    assert!(broken.is_empty(), "{broken:#?}");
}

#[test]
fn the_rule_can_see_a_violation() {
    assert!(mentions("use object_store::path::Path;", "object_store"));
    assert!(!mentions(
        "// object_store is only named in comments",
        "object_store"
    ));
    assert!(mentions("use crate::{fs, store::Bucket};", "crate::store"));
    assert!(mentions(
        "use crate::{\n    options::X,\n    mounter::{a, b},\n};",
        "crate::mounter::b"
    ));
    assert!(!mentions("use crate::{fs, options};", "crate::store"));
}

#[test]
fn every_file_says_what_it_owns_and_stays_small() {
    let mut broken = Vec::new();
    for dir in ["src", "tests", "benches"] {
        for (path, text) in files_under(dir) {
            if !text.starts_with("//!") {
                broken.push(format!("{path}: does not start with a //! line"));
            }
            let n = text.lines().count();
            if n > 800 {
                broken.push(format!("{path}: {n} lines (split it before 800)"));
            }
        }
    }
    assert!(broken.is_empty(), "{broken:#?}");
}
