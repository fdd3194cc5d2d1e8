//! Guard rails on the engine's shape:
//! - imports flow one way along a message's path: inbound → shard → outbound → account (a
//!   stage never names a stage before it; the shared modules name no stage at all);
//! - the control plane (`admin`, and `metrics` beside it) asks cores through `shard::admin_ops`
//!   and never reaches into a core's state or a stage; nothing but the runtime (and the metrics
//!   endpoint, which asks through the admin) names the admin; a stage names only
//!   `metrics::local`, the counters a core keeps;
//! - no function in the engine or the spool passes 70 lines (TigerBeetle's limit,
//!   CONVENTIONS.md 9); test files (`*_tests.rs`, `#[cfg(test)]` modules) are exempt.
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 70;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") && !path.to_string_lossy().ends_with("_tests.rs") {
            out.push(path);
        }
    }
}

/// `(name, first line, length)` of every function body in `text` before its `#[cfg(test)]`.
fn functions(text: &str) -> Vec<(String, usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim_start();
        if line.starts_with("#[cfg(test)]") {
            break;
        }
        if let Some(name) = fn_name(line).filter(|_| !line.trim_end().ends_with(';')) {
            let (start, mut depth, mut opened) = (i, 0i64, false);
            while i < lines.len() {
                depth += lines[i].matches('{').count() as i64 - lines[i].matches('}').count() as i64;
                opened |= lines[i].contains('{');
                if opened && depth <= 0 {
                    break;
                }
                i += 1;
            }
            out.push((name, start + 1, i - start + 1));
        }
        i += 1;
    }
    out
}

fn fn_name(line: &str) -> Option<String> {
    let mut rest = line;
    for prefix in ["pub(crate) ", "pub(super) ", "pub ", "const ", "async ", "unsafe "] {
        rest = rest.strip_prefix(prefix).unwrap_or(rest);
    }
    let rest = rest.strip_prefix("async ").unwrap_or(rest).strip_prefix("fn ")?;
    Some(rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect())
}

#[test]
fn the_checker_measures_what_it_claims() {
    let long = format!("fn big() {{\n{}}}\nfn small() {{\n}}\n", "    x();\n".repeat(80));
    let f = functions(&long);
    assert_eq!(f, vec![("big".to_string(), 1, 82), ("small".to_string(), 83, 2)]);
    assert!(functions("#[cfg(test)]\nfn t() {\n}\n").is_empty());
}

#[test]
fn no_function_in_engine_or_spool_passes_70_lines() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut files = Vec::new();
    for dir in ["engine/src", "engine/smtp/src", "spool/src"] {
        rust_files(&root.join(dir), &mut files);
    }
    let mut long = Vec::new();
    for f in &files {
        for (name, line, len) in functions(&std::fs::read_to_string(f).unwrap()) {
            if len > MAX_LINES {
                long.push(format!("{}:{line} {name} ({len} lines)", f.strip_prefix(root).unwrap().display()));
            }
        }
    }
    assert!(long.is_empty(), "functions over {MAX_LINES} lines:\n{}", long.join("\n"));
}

/// The stages in path order, and the modules every stage may use but that use no stage.
const STAGES: [&str; 4] = ["inbound", "shard", "outbound", "account"];
const SHARED: [&str; 10] = ["clock", "cluster_config", "config", "dkim", "durable_file", "message", "tls", "smtp", "trace", "wire_write"];

/// Every `crate::<module>` a file names.
fn crate_refs(text: &str) -> Vec<String> {
    text.match_indices("crate::").map(|(at, m)| text[at + m.len()..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect()).collect()
}

/// What of the shard the control plane may name: the admin messages, destination ownership
/// (a pure function) and the host-wide configuration. Never `Core` or a core's parts.
const ADMIN_MAY_NAME: [&str; 3] = ["shard::admin_ops", "shard::router", "shard::core::Shared"];

/// Every `crate::...` path a file names, without the `crate::` (as far as it is spelled out).
fn crate_paths(text: &str) -> Vec<String> {
    text.match_indices("crate::")
        .map(|(at, m)| text[at + m.len()..].chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':').collect())
        .collect()
}

/// Why the control plane may not name `path`, if it may not.
fn admin_forbidden(path: &str) -> Option<String> {
    let top = path.split("::").next().unwrap_or("");
    if top == "shard" && !ADMIN_MAY_NAME.iter().any(|a| path.starts_with(a)) {
        return Some("admin asks cores through shard::admin_ops; it never touches a core's state".into());
    }
    if STAGES.contains(&top) && top != "shard" {
        return Some(format!("admin must not reach into stage {top}; ask the core"));
    }
    None
}

/// Why `from` (a top-level module) may not name `to`, if it may not.
fn forbidden(from: &str, to: &str) -> Option<String> {
    if to == "admin" && !["admin", "runtime", "metrics"].contains(&from) {
        return Some(format!("{from} must not depend on the control plane (only runtime starts it)"));
    }
    let rank = |m: &str| STAGES.iter().position(|s| *s == m);
    match (rank(from), rank(to)) {
        (Some(a), Some(b)) if b < a => Some(format!("{from} comes after {to} on the path")),
        (None, Some(_)) if SHARED.contains(&from) => Some(format!("shared module {from} must not depend on stage {to}")),
        _ => None,
    }
}

#[test]
fn the_import_rule_catches_a_backward_import() {
    assert!(forbidden("outbound", "shard").is_some());
    assert!(forbidden("message", "inbound").is_some());
    assert!(forbidden("shard", "outbound").is_none());
    assert!(forbidden("runtime", "inbound").is_none(), "runtime assembles every stage");
    assert_eq!(crate_refs("use crate::shard::core::Core; crate::clock::unix_ms()"), ["shard", "clock"]);
    assert!(forbidden("shard", "admin").is_some(), "a core never calls the control plane");
    assert!(forbidden("runtime", "admin").is_none());
    assert!(forbidden("metrics", "admin").is_none(), "the metrics endpoint asks cores through the admin");
    assert!(forbidden("outbound", "admin").is_some());
    assert_eq!(crate_paths("use crate::shard::core::Core;"), ["shard::core::Core"]);
    assert!(admin_forbidden("shard::core::Core").is_some(), "the admin must not hold a core");
    assert!(admin_forbidden("shard::ledger::Ledger").is_some());
    assert!(admin_forbidden("outbound::queue::QueueManager").is_some());
    assert!(admin_forbidden("shard::admin_ops::CoreOp").is_none());
    assert!(admin_forbidden("shard::core::Shared").is_none());
}

#[test]
fn imports_flow_one_way_along_the_path() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut bad = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap();
        let top = rel.components().next().unwrap().as_os_str().to_string_lossy().trim_end_matches(".rs").to_string();
        let text = std::fs::read_to_string(f).unwrap();
        for to in crate_refs(&text) {
            if let Some(why) = forbidden(&top, &to) {
                bad.push(format!("{}: crate::{to} ({why})", rel.display()));
            }
        }
        let control_plane = top == "admin" || (top == "metrics" && !rel.ends_with("local.rs"));
        for path in crate_paths(&text).iter().filter(|_| control_plane) {
            if let Some(why) = admin_forbidden(path) {
                bad.push(format!("{}: crate::{path} ({why})", rel.display()));
            }
        }
        for path in crate_paths(&text).iter().filter(|p| STAGES.contains(&top.as_str()) && p.starts_with("metrics::")) {
            if !path.starts_with("metrics::local") {
                bad.push(format!("{}: crate::{path} (a stage names only metrics::local; the endpoint is control plane)", rel.display()));
            }
        }
    }
    assert!(bad.is_empty(), "imports against the path:\n{}", bad.join("\n"));
}
