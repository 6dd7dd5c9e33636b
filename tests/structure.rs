//! The shape of the code, checked (issue #14): the modules of the gateway import one
//! another without a cycle, and no product module uses the simulator (only the binary's
//! `demo` module, behind the `demo` feature, starts it).
//!
//! A module here is a top-level module of `src/` (a file or a folder); it depends on
//! another when any of its files names `crate::<other>` in code (comments do not count).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without its comment lines.
fn code(path: &Path) -> String {
    fs::read_to_string(path)
        .expect("read a source file")
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level module names `text` reaches through `crate::`: `crate::a::b`, and every
/// first segment of a `crate::{a, b::c, d::{…}}` group.
fn crate_refs(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level items of the group, up to its closing brace.
            let (mut depth, mut item) = (0usize, String::new());
            for c in group.chars() {
                match c {
                    '{' => {
                        depth += 1;
                        item.push(c);
                    }
                    '}' if depth == 0 => break,
                    '}' => {
                        depth -= 1;
                        item.push(c);
                    }
                    ',' if depth == 0 => {
                        out.insert(ident(item.trim()));
                        item.clear();
                    }
                    _ => item.push(c),
                }
            }
            out.insert(ident(item.trim()));
        } else {
            out.insert(ident(rest));
        }
    }
    out.retain(|m| !m.is_empty());
    out
}

/// Module → the modules it uses, for every top-level module of `src/` (not the crate root
/// `lib.rs`, which assembles them, nor `main.rs`).
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let rel = f.strip_prefix(src).expect("under src");
        let first = rel.components().next().expect("a component");
        let name = first
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        if name == "lib" || name == "main" {
            continue;
        }
        graph.entry(name).or_default().extend(crate_refs(&code(f)));
    }
    let names: BTreeSet<String> = graph.keys().cloned().collect();
    for (name, deps) in &mut graph {
        deps.retain(|d| names.contains(d) && d != name);
    }
    graph
}

/// One cycle of `graph`, if it has any (depth-first search, white/grey/black).
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_owned(), 1);
        path.push(n.to_owned());
        for d in graph.get(n).into_iter().flatten() {
            match state.get(d.as_str()).copied().unwrap_or(0) {
                0 => {
                    if let Some(c) = visit(d, graph, state, path) {
                        return Some(c);
                    }
                }
                1 => {
                    let at = path.iter().position(|p| p == d).unwrap_or(0);
                    let mut cycle = path[at..].to_vec();
                    cycle.push(d.clone());
                    return Some(cycle);
                }
                _ => {}
            }
        }
        path.pop();
        state.insert(n.to_owned(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in graph.keys() {
        if state.get(n.as_str()).copied().unwrap_or(0) == 0
            && let Some(c) = visit(n, graph, &mut state, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn modules_import_one_another_without_a_cycle() {
    let graph = module_graph(&src());
    // The graph is real: the pipeline's steps are found and linked.
    for (from, to) in [
        ("api", "fetch"),
        ("api", "account"),
        ("account", "fetch"),
        ("fetch", "cache"),
        ("cache", "cluster"),
        ("cluster", "budget"),
    ] {
        assert!(
            graph.get(from).is_some_and(|d| d.contains(to)),
            "{from} → {to} not found in {graph:?}"
        );
    }
    // The budget knows the replicas' shared log only through its own trait (issue #20).
    assert!(
        !graph.get("budget").is_some_and(|d| d.contains("cluster")),
        "budget imports cluster: {:?}",
        graph.get("budget")
    );
    if let Some(cycle) = find_cycle(&graph) {
        panic!("module cycle: {}", cycle.join(" → "));
    }
}

#[test]
fn the_cycle_check_finds_cycles() {
    let text = "use crate::{b::X, c::{d, e}};\nfn f() { crate::d::g(); }";
    assert_eq!(
        crate_refs(text),
        ["b", "c", "d"].map(String::from).into_iter().collect()
    );
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (a, b) in [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")] {
        g.entry(a.into()).or_default().insert(b.into());
    }
    let cycle = find_cycle(&g).expect("a → b → c → a");
    assert_eq!(cycle.first(), cycle.last());
    assert_eq!(cycle.len(), 4);
    if let Some(d) = g.get_mut("c") {
        d.remove("a");
    }
    assert_eq!(find_cycle(&g), None);
}

#[test]
fn no_product_module_uses_the_simulator() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let users: Vec<String> = files
        .iter()
        .filter(|f| code(f).contains("kore_sim"))
        .map(|f| f.display().to_string())
        .collect();
    // Only the binary starts it (for --demo / --simulator), behind the `demo` feature.
    assert_eq!(users, [src().join("main.rs").display().to_string()]);
    let main = code(&src().join("main.rs"));
    let demo = main
        .find("#[cfg(feature = \"demo\")]\nmod demo {")
        .expect("main.rs has a `demo` module behind the feature");
    assert!(
        !main[..demo].contains("kore_sim"),
        "main.rs uses the simulator outside its `demo` module"
    );
}

/// No Rust file of the workspace is over 1,000 lines: a file that grows past it holds more
/// than one concern (its tests go to a sibling `tests.rs`, its parts to a folder).
#[test]
fn no_rust_file_is_over_a_thousand_lines() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in [
        "src",
        "tests",
        "benches",
        "crates/sim/src",
        "crates/tools/src",
    ] {
        rust_files(&root.join(dir), &mut files);
    }
    assert!(
        files.len() > 50,
        "the walk found the sources: {}",
        files.len()
    );
    let long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let n = fs::read_to_string(f)
                .expect("read a source file")
                .lines()
                .count();
            (n > 1000).then(|| format!("{} ({n} lines)", f.display()))
        })
        .collect();
    assert!(long.is_empty(), "over 1,000 lines: {long:?}");
}
