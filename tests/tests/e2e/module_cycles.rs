//! No two modules of a workspace crate import each other, directly or around a circle: the
//! code map stays a tree that can be read from the bottom up. Reads `crates/*/src` as text.
//!
//! An import is a `crate::…` or `super::…` path outside comments and outside the file's
//! `#[cfg(test)] mod` (tests may reach anywhere), resolved to the longest module it names.
//! Paths between a module and its ancestors (a parent re-exporting its child, a child using
//! its parent's items, the crate root) are not counted: those are one module's inside.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

type Module = Vec<String>;

/// Module path → the modules it imports.
type Graph = BTreeMap<Module, BTreeSet<Module>>;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("read a source dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/a/b.rs` and `src/a/b/mod.rs` are `a::b`; `lib.rs` and `main.rs` are the root.
fn module_of(src: &Path, file: &Path) -> Module {
    let rel = file.strip_prefix(src).expect("file under src").with_extension("");
    let mut parts: Module =
        rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
    if parts.last().is_some_and(|p| p == "mod") || parts == ["lib"] || parts == ["main"] {
        parts.pop();
    }
    parts
}

/// The code that counts: without line comments and without the test module at the end.
fn code_of(text: &str) -> String {
    let mut code = String::with_capacity(text.len());
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let test_module = line.trim_start().starts_with("#[cfg(test)]")
            && lines.peek().is_some_and(|next| {
                let next = next.trim_start();
                next.starts_with("mod ") || next.starts_with("pub(crate) mod ")
            });
        if test_module {
            break;
        }
        code.push_str(line.split("//").next().unwrap_or_default());
        code.push('\n');
    }
    code
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Every path that starts at `crate::` or `super::`, as (start keyword, segments); a group
/// (`crate::a::{b, c::d}`) gives one path per member.
fn paths_in(code: &str) -> Vec<(&'static str, Vec<String>)> {
    let mut out = Vec::new();
    for keyword in ["crate", "super"] {
        let mut from = 0;
        while let Some(at) = code[from..].find(keyword).map(|i| i + from) {
            from = at + keyword.len();
            let before = code[..at].chars().next_back();
            if before.is_some_and(|c| is_ident(c) || c == ':') || !code[from..].starts_with("::") {
                continue;
            }
            out.extend(path_at(&code[from..]).into_iter().map(|p| (keyword, p)));
        }
    }
    out
}

/// The path segments after a keyword (`::a::b::{c, d::e}` → `[a, b, c]`, `[a, b, d, e]`).
fn path_at(rest: &str) -> Vec<Vec<String>> {
    let mut segments = Vec::new();
    let mut rest = rest;
    while let Some(next) = rest.strip_prefix("::") {
        if let Some(group) = next.strip_prefix('{') {
            let mut depth = 1;
            let mut end = group.len();
            for (i, c) in group.char_indices() {
                depth += match c {
                    '{' => 1,
                    '}' => -1,
                    _ => 0,
                };
                if depth == 0 {
                    end = i;
                    break;
                }
            }
            let mut members = Vec::new();
            let mut depth = 0;
            let mut start = 0;
            let inner = &group[..end];
            for (i, c) in inner.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        members.push(&inner[start..i]);
                        start = i + 1;
                    }
                    _ => {}
                }
            }
            members.push(&inner[start..]);
            return members
                .into_iter()
                .flat_map(|m| {
                    let m = m.trim();
                    let name: String = m.chars().take_while(|&c| is_ident(c)).collect();
                    if name.is_empty() {
                        return Vec::new();
                    }
                    path_at(&format!("::{m}"))
                        .into_iter()
                        .map(|tail| {
                            let mut path = segments.clone();
                            path.extend(tail);
                            path
                        })
                        .collect()
                })
                .collect();
        }
        let name: String = next.chars().take_while(|&c| is_ident(c)).collect();
        if name.is_empty() {
            break;
        }
        rest = &next[name.len()..];
        segments.push(name);
    }
    vec![segments]
}

/// The import graph of the crate whose sources are in `src`.
fn graph_of(src: &Path) -> Graph {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: BTreeMap<Module, PathBuf> =
        files.into_iter().map(|f| (module_of(src, &f), f)).collect();
    let mut graph = Graph::new();
    for (module, file) in &modules {
        let text = fs::read_to_string(file).expect("read a source file");
        for (keyword, segments) in paths_in(&code_of(&text)) {
            let mut segments = segments.as_slice();
            let mut full = Vec::new();
            if keyword == "super" {
                full = module[..module.len().saturating_sub(1)].to_vec();
                while let Some(rest) = segments.strip_prefix(&["super".to_string()]) {
                    full.pop();
                    segments = rest;
                }
            }
            full.extend(segments.iter().cloned());
            let target = (0..=full.len())
                .rev()
                .map(|k| full[..k].to_vec())
                .find(|m| modules.contains_key(m));
            if let Some(target) = target {
                if !target.starts_with(module) && !module.starts_with(&target) {
                    graph.entry(module.clone()).or_default().insert(target);
                }
            }
        }
    }
    graph
}

/// The circles of `graph`: its strongly connected components of more than one module.
fn circles(graph: &Graph) -> Vec<Vec<Module>> {
    // Two modules share a circle when each reaches the other.
    let reach = |from: &Module| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.clone()];
        while let Some(m) = todo.pop() {
            for next in graph.get(&m).into_iter().flatten() {
                if seen.insert(next.clone()) {
                    todo.push(next.clone());
                }
            }
        }
        seen
    };
    let reached: BTreeMap<&Module, BTreeSet<Module>> =
        graph.keys().map(|m| (m, reach(m))).collect();
    let mut placed = BTreeSet::new();
    let mut out = Vec::new();
    for (m, from_m) in &reached {
        if placed.contains(*m) || !from_m.contains(*m) {
            continue;
        }
        let circle: Vec<Module> = reached
            .iter()
            .filter(|(other, from_other)| from_m.contains(**other) && from_other.contains(*m))
            .map(|(other, _)| (*other).clone())
            .collect();
        placed.extend(circle.iter().cloned());
        out.push(circle);
    }
    out
}

#[test]
fn no_module_of_a_workspace_crate_imports_around_a_circle() {
    let crates = workspace_root().join("crates");
    let mut found = Vec::new();
    for entry in fs::read_dir(&crates).expect("read crates/").flatten() {
        let src = entry.path().join("src");
        if !src.is_dir() {
            continue;
        }
        for circle in circles(&graph_of(&src)) {
            let names: Vec<String> = circle.iter().map(|m| m.join("::")).collect();
            found.push(format!("{}: {}", entry.file_name().to_string_lossy(), names.join(" ⇄ ")));
        }
    }
    found.sort();
    assert!(found.is_empty(), "modules that import each other:\n{}", found.join("\n"));
}

#[test]
fn a_circle_through_three_modules_is_found_and_a_parent_child_pair_is_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path();
    let write = |name: &str, text: &str| {
        let path = src.join(name);
        fs::create_dir_all(path.parent().expect("has a parent")).expect("mkdir");
        fs::write(path, text).expect("write");
    };
    write("lib.rs", "mod a;\nmod b;\nmod c;\nmod d;\npub use a::A;\n");
    write("a.rs", "use crate::b::B; // crate::d::D in a comment does not count\n");
    write("b.rs", "use crate::{c::{self, C}, Root};\n");
    write("c.rs", "fn f() { crate::a::A::new(); }\n#[cfg(test)]\nmod tests { use crate::d; }\n");
    write("d/mod.rs", "mod inner;\npub use inner::X;\n");
    write("d/inner.rs", "use super::super::a::A;\nuse super::Y;\n");
    let graph = graph_of(src);
    let name = |m: &str| m.split("::").map(str::to_string).collect::<Module>();
    assert_eq!(circles(&graph), vec![vec![name("a"), name("b"), name("c")]]);
    assert_eq!(graph.get(&name("d::inner")), Some(&BTreeSet::from([name("a")])));
    assert!(!graph.contains_key(&name("d")), "{graph:?}");
}
