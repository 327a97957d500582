//! The daemon's layout rules, checked on its source (ARCHITECTURE.md, "Code map"):
//! - `common/` imports nothing from the rest of the crate;
//! - no circle of files that import each other crosses a folder: a cycle stays inside one
//!   feature folder (`vm/`, `storage/`...), where its files are one concept.
//!
//! A file's imports are the `crate::...` paths in it outside comments and `#[cfg(test)]` code,
//! resolved to the longest path that is a file of the crate.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `vm/worker/mod.rs` -> `vm::worker`, `lib.rs` -> `` (the crate root).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts.join("::")
}

/// The code of a file without its tests and comments.
fn code_of(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or(text);
    text.lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every `crate::a::b::c` path in `code`, as its lowercase segments (a type name ends it).
fn crate_paths(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let tail = &rest[at + "crate::".len()..];
        let mut segments = Vec::new();
        let mut cursor = tail;
        loop {
            let end = cursor
                .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
                .unwrap_or(cursor.len());
            if end == 0 {
                break;
            }
            segments.push(cursor[..end].to_string());
            match cursor[end..].strip_prefix("::") {
                Some(next) => cursor = next,
                None => break,
            }
        }
        out.push(segments);
        rest = tail;
    }
    out
}

struct Graph {
    edges: BTreeMap<String, BTreeSet<String>>,
}

fn graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeMap<String, PathBuf> = files
        .iter()
        .map(|f| (module_of(&src, f), f.clone()))
        .collect();
    let mut edges = BTreeMap::new();
    for (module, file) in &modules {
        let code = code_of(&std::fs::read_to_string(file).unwrap());
        let mut targets = BTreeSet::new();
        for path in crate_paths(&code) {
            let target = (1..=path.len())
                .rev()
                .map(|n| path[..n].join("::"))
                .find(|candidate| modules.contains_key(candidate));
            if let Some(target) = target.filter(|t| t != module) {
                targets.insert(target);
            }
        }
        edges.insert(module.clone(), targets);
    }
    Graph { edges }
}

/// Tarjan's strongly connected components: the circles of files.
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    struct State<'a> {
        graph: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in &s.graph.edges[v] {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            loop {
                let w = s.stack.pop().unwrap();
                s.on_stack.remove(w);
                component.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.out.push(component);
            }
        }
    }
    let mut state = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in graph.edges.keys() {
        if !state.index.contains_key(v.as_str()) {
            visit(&mut state, v);
        }
    }
    state.out
}

/// The folder of a module (`vm::worker` -> `vm`); files at the root are each their own.
fn folder(module: &str) -> &str {
    module.split("::").next().unwrap_or(module)
}

#[test]
fn common_imports_nothing_from_the_rest_of_the_crate() {
    let graph = graph();
    let wrong: Vec<String> = graph
        .edges
        .iter()
        .filter(|(m, _)| folder(m) == "common")
        .flat_map(|(m, targets)| {
            targets
                .iter()
                .filter(|t| folder(t) != "common")
                .map(move |t| format!("{m} -> {t}"))
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "common/ must not import the crate: {wrong:#?}"
    );
}

#[test]
fn no_circle_of_files_crosses_a_folder() {
    let graph = graph();
    assert!(graph.edges.len() > 30, "found the crate's files");
    let crossing: Vec<Vec<String>> = cycles(&graph)
        .into_iter()
        .filter(|c| c.iter().map(|m| folder(m)).collect::<BTreeSet<_>>().len() > 1)
        .collect();
    assert!(
        crossing.is_empty(),
        "files importing each other across folders (move the shared piece down, e.g. into \
         common/ or a file of its own): {crossing:#?}"
    );
}

#[test]
fn the_cycle_finder_finds_a_cycle_and_only_it() {
    let edges = [("a::x", "b::y"), ("b::y", "a::x"), ("a::x", "c")]
        .iter()
        .fold(
            BTreeMap::<String, BTreeSet<String>>::new(),
            |mut m, (f, t)| {
                m.entry(f.to_string()).or_default().insert(t.to_string());
                m.entry(t.to_string()).or_default();
                m
            },
        );
    let found = cycles(&Graph { edges });
    assert_eq!(found, vec![vec!["a::x".to_string(), "b::y".to_string()]]);
    assert_eq!(
        crate_paths("use crate::vm::model::{a, b};\nlet x = crate::ctx::Ctx::new();"),
        vec![
            vec!["vm".to_string(), "model".to_string()],
            vec!["ctx".to_string()]
        ]
    );
}
