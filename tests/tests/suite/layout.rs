//! The workspace's shape, checked from its sources: no import cycle between the modules of any
//! crate (a module's `use crate::...`, `super::...` and inline `crate::...` paths are its arrows),
//! and no task started outside the agent's one tracker (no bare `tokio::spawn`, no `abort()`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace")
        .to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// A file's module path inside its crate (`api::http`; the crate root is "").
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = rel
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts.join("::")
}

/// The source without its unit tests and line comments.
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]\nmod tests").next().unwrap_or("");
    text.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Expands a `use` tree (`a::{b, c::{d, e}}`) into paths.
fn expand(prefix: &str, tree: &str, out: &mut Vec<String>) {
    let tree = tree.trim();
    if let Some(open) = tree.find('{')
        && tree.ends_with('}')
    {
        let head = &tree[..open];
        let inner = &tree[open + 1..tree.len() - 1];
        let (mut depth, mut start) = (0, 0);
        for (i, ch) in inner.char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&format!("{prefix}{head}"), &inner[start..i], out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        expand(&format!("{prefix}{head}"), &inner[start..], out);
    } else if !tree.is_empty() {
        let path = tree.split(" as ").next().unwrap_or(tree);
        out.push(format!("{prefix}{path}").replace(char::is_whitespace, ""));
    }
}

/// The module a `crate::`/`super::`/`self::` or relative path names (the longest known prefix
/// longer than the module itself), if any.
fn resolve(modules: &BTreeSet<String>, from: &str, path: &str) -> Option<String> {
    let mut segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
    let mut base: Vec<&str> = Vec::new();
    match segs.first().copied() {
        Some("crate") => {
            segs.remove(0);
        }
        Some("super" | "self") => {
            base = if from.is_empty() {
                Vec::new()
            } else {
                from.split("::").collect()
            };
            while let Some(s) = segs.first().copied() {
                match s {
                    "super" => {
                        base.pop();
                    }
                    "self" => {}
                    _ => break,
                }
                segs.remove(0);
            }
        }
        // A path relative to the module: `use child::Item` (a re-export of a child's item makes
        // the module depend on that child).
        Some(_) => {
            base = if from.is_empty() {
                Vec::new()
            } else {
                from.split("::").collect()
            };
        }
        None => return None,
    }
    let mut best = None;
    for i in 0..=segs.len() {
        let cand: Vec<&str> = base
            .iter()
            .copied()
            .chain(segs[..i].iter().copied())
            .collect();
        let cand = cand.join("::");
        if modules.contains(&cand) {
            best = Some(cand);
        }
    }
    best
}

/// Each module's arrows to the other modules of its crate (a child's arrows to its ancestors do
/// not count: a module may use what its parent holds).
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let sources: BTreeMap<String, String> = files
        .iter()
        .map(|f| {
            (
                module_of(src, f),
                code(&std::fs::read_to_string(f).expect("readable")),
            )
        })
        .collect();
    let modules: BTreeSet<String> = sources.keys().cloned().collect();
    let mut edges = BTreeMap::new();
    for (m, text) in &sources {
        let mut paths = Vec::new();
        let mut rest = text.as_str();
        while let Some(i) = rest.find("use ") {
            let before = rest[..i].chars().last();
            let after = &rest[i + 4..];
            if before.is_none_or(|c| !c.is_alphanumeric() && c != '_')
                && let Some(end) = after.find(';')
            {
                expand("", &after[..end], &mut paths);
            }
            rest = after;
        }
        for key in ["crate::", "super::"] {
            let mut rest = text.as_str();
            while let Some(i) = rest.find(key) {
                let before = rest[..i].chars().last();
                let tail = &rest[i..];
                let len = tail
                    .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                    .unwrap_or(tail.len());
                if before.is_none_or(|c| !c.is_alphanumeric() && c != '_') {
                    paths.push(tail[..len].to_owned());
                }
                rest = &rest[i + key.len()..];
            }
        }
        let to: BTreeSet<String> = paths
            .iter()
            .filter_map(|p| resolve(&modules, m, p))
            .filter(|t| t != m && !t.is_empty() && !m.starts_with(&format!("{t}::")))
            .collect();
        edges.insert(m.clone(), to);
    }
    edges
}

/// One cycle, if the graph has any.
fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_owned(), 1);
        stack.push(n.to_owned());
        for m in edges.get(n).into_iter().flatten() {
            match state.get(m).copied() {
                Some(1) => {
                    let at = stack.iter().position(|s| s == m).unwrap_or(0);
                    let mut cycle = stack[at..].to_vec();
                    cycle.push(m.clone());
                    return Some(cycle);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(m, edges, state, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        state.insert(n.to_owned(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in edges.keys() {
        if !state.contains_key(n)
            && let Some(c) = visit(n, edges, &mut state, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

const CRATES: [&str; 7] = [
    "agent",
    "mesh",
    "models",
    "orchestrate",
    "proto",
    "proxy",
    "tests",
];

#[test]
fn no_crate_has_an_import_cycle() {
    let root = workspace();
    for krate in CRATES {
        let edges = graph(&root.join(krate).join("src"));
        assert!(!edges.is_empty(), "{krate}: modules found");
        if let Some(cycle) = find_cycle(&edges) {
            panic!("{krate}: import cycle {}", cycle.join(" -> "));
        }
    }
    // The checker sees cycles: two modules that use each other.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("lib.rs"), "mod a;\nmod b;\n").expect("write");
    std::fs::write(dir.path().join("a.rs"), "use crate::b::B;\npub struct A;\n").expect("write");
    std::fs::write(dir.path().join("b.rs"), "pub struct B(crate::a::A);\n").expect("write");
    assert!(find_cycle(&graph(dir.path())).is_some());
}

#[test]
fn every_task_runs_on_the_tracker() {
    let root = workspace();
    for krate in ["agent", "mesh"] {
        let mut files = Vec::new();
        rust_files(&root.join(krate).join("src"), &mut files);
        for f in files {
            // The simulated fleet and the attack tests drive their own nodes.
            if f.ends_with("sim.rs") || f.ends_with("attacks.rs") {
                continue;
            }
            let text = code(&std::fs::read_to_string(&f).expect("readable"));
            for banned in [
                "tokio::spawn(",
                "tokio::task::spawn(",
                ".abort()",
                "std::thread::spawn(",
            ] {
                assert!(
                    !text.contains(banned),
                    "{}: {banned} outside the tracker (spawn on augur_mesh::Tasks)",
                    f.display()
                );
            }
        }
    }
}
