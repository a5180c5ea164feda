//! The shape of `src/`: no import cycles between its files.
//!
//! Every file is a node; every path it names (`use crate::a::b::C`,
//! `super::x::y`, an inline `crate::a::f()`, a `pub use` re-export) is an
//! edge to the file of the longest module prefix of that path. Re-exports
//! are edges like any other use, so a folder's `mod.rs` that re-exports its
//! children must not be named by those children: inside the crate, a path
//! names the file that defines the item. `mod x;` declarations are not
//! edges (a parent owns its children), and test code (`#[cfg(test)]`
//! modules, `tests.rs` files) may import anything.
//!
//! This reads the source as text rather than asking the compiler: no tool
//! that rustc ships reports module dependencies, and the crates that do
//! (cargo-modules) build rust-analyzer, minutes of compile time on 2 cores
//! for a check that needs a few dozen lines.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A file's module path, e.g. `["lifecycle", "plan"]`; `[]` is the crate root.
type ModPath = Vec<String>;

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every library source file with its module path (`main.rs` is the
/// binary's own crate root and imports the library only by name).
fn modules() -> BTreeMap<ModPath, PathBuf> {
    fn walk(dir: &Path, prefix: &[String], out: &mut BTreeMap<ModPath, PathBuf>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                let mut p = prefix.to_vec();
                p.push(path.file_name().unwrap().to_string_lossy().into_owned());
                walk(&path, &p, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let module = match name.as_str() {
                    "mod" => prefix.to_vec(),
                    "lib" if prefix.is_empty() => Vec::new(),
                    "main" if prefix.is_empty() => continue,
                    _ => {
                        let mut p = prefix.to_vec();
                        p.push(name);
                        p
                    }
                };
                out.insert(module, path);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(&src_dir(), &[], &mut out);
    out
}

/// The source without comments, string and char literals (their text could
/// look like paths), and without test-only code.
fn code_of(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        let rest = &text[i..];
        if rest.starts_with("//") {
            i += rest.find('\n').unwrap_or(rest.len());
        } else if rest.starts_with("/*") {
            i += rest.find("*/").map_or(rest.len(), |e| e + 2);
        } else if let Some(len) = raw_string_len(rest) {
            out.push_str("\"\"");
            i += len;
        } else if rest.starts_with('"') {
            let mut j = 1;
            while j < rest.len() {
                match rest.as_bytes()[j] {
                    b'\\' => j += 2,
                    b'"' => break,
                    _ => j += 1,
                }
            }
            out.push_str("\"\"");
            i += j + 1;
        } else if let Some(len) = char_literal_len(rest) {
            out.push_str("' '");
            i += len;
        } else {
            let c = rest.chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    strip_test_modules(&out)
}

/// `r"..."`, `r#"..."#`, `br"..."`: the literal's length.
fn raw_string_len(s: &str) -> Option<usize> {
    let body = s.strip_prefix("br").or_else(|| s.strip_prefix('r'))?;
    let hashes = body.len() - body.trim_start_matches('#').len();
    let open = body[hashes..].strip_prefix('"')?;
    let close = format!("\"{}", "#".repeat(hashes));
    let end = open.find(&close)?;
    Some(s.len() - open.len() + end + close.len())
}

/// `'x'`, `'\n'`, `'\''`, `'\u{1F600}'`; not a lifetime (`'a`).
fn char_literal_len(s: &str) -> Option<usize> {
    let rest = s.strip_prefix('\'')?;
    if let Some(esc) = rest.strip_prefix('\\') {
        let end = esc.find('\'')?;
        return Some(2 + end + 1);
    }
    let c = rest.chars().next()?;
    rest[c.len_utf8()..]
        .starts_with('\'')
        .then(|| 1 + c.len_utf8() + 1)
}

/// Removes `#[cfg(test)]` items (an inline `mod tests { ... }`, or a test
/// helper `fn`/`impl`): from the attribute to the end of its braces.
fn strip_test_modules(code: &str) -> String {
    let mut out = String::new();
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        // `#[cfg(test)] mod tests;` declares an out-of-line test file.
        let semi = after.find(';');
        let brace = after.find('{');
        match (semi, brace) {
            (Some(s), b) if b.is_none_or(|b| s < b) => rest = &after[s + 1..],
            (_, Some(b)) => {
                let mut depth = 0usize;
                let mut end = after.len();
                for (k, ch) in after[b..].char_indices() {
                    match ch {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = b + k + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                rest = &after[end..];
            }
            _ => rest = "",
        }
    }
    out.push_str(rest);
    out
}

/// Files that are test modules of their parent (`#[cfg(test)] mod tests;`).
fn is_test_file(path: &Path) -> bool {
    path.file_stem().is_some_and(|s| s == "tests")
}

/// The child modules a file declares (`mod x;`, `pub mod x;`).
fn children_of(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = find_keyword(rest, "mod") {
        let decl = rest[at + 3..].trim_start();
        let name: String = decl
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if decl[name.len()..].trim_start().starts_with(';') {
            out.insert(name);
        }
        rest = &rest[at + 3..];
    }
    out
}

/// Every path the code names, as written (`crate::a::b`, `super::x`,
/// `self::y`, or `x::y` for a child module `x`), `use` groups expanded.
fn paths_in(code: &str) -> Vec<Vec<String>> {
    let children = children_of(code);
    let mut paths = Vec::new();
    // `use` declarations, with their `{...}` groups.
    let mut rest = code;
    while let Some(at) = find_keyword(rest, "use") {
        let decl = &rest[at + 3..];
        let end = decl.find(';').unwrap_or(decl.len());
        expand_use(decl[..end].trim(), &[], &mut paths);
        rest = &decl[end..];
    }
    // Inline paths anywhere (`crate::keys::fill_random(...)`).
    let tokens: Vec<&str> = code
        .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
        .filter(|t| !t.is_empty())
        .collect();
    for t in tokens {
        let segs: Vec<String> = t
            .split("::")
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if segs.len() > 1
            && (matches!(segs[0].as_str(), "crate" | "super" | "self")
                || children.contains(&segs[0]))
        {
            paths.push(segs);
        }
    }
    // A path that starts at a child module is relative to this file.
    for p in &mut paths {
        if p.first().is_some_and(|f| children.contains(f)) {
            p.insert(0, "self".to_owned());
        }
    }
    paths
}

/// The byte offset of `word` as a whole word.
fn find_keyword(s: &str, word: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = s[from..].find(word) {
        let at = from + i;
        let before = s[..at].chars().next_back();
        let after = s[at + word.len()..].chars().next();
        let boundary = |c: Option<char>| c.is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
        if boundary(before) && after.is_some_and(char::is_whitespace) {
            return Some(at);
        }
        from = at + word.len();
    }
    None
}

/// `a::b::{c, d::{e, f}}` with `prefix` -> every full path.
fn expand_use(tree: &str, prefix: &[String], out: &mut Vec<Vec<String>>) {
    let tree = tree.trim();
    if tree.is_empty() {
        return;
    }
    match tree.find('{') {
        Some(open) => {
            let head = tree[..open].trim_end_matches("::").trim();
            let mut base = prefix.to_vec();
            base.extend(
                head.split("::")
                    .filter(|s| !s.is_empty())
                    .map(|s| s.trim().to_owned()),
            );
            let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
            let mut depth = 0;
            let mut start = 0;
            for (i, c) in inner.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        expand_use(&inner[start..i], &base, out);
                        start = i + 1;
                    }
                    _ => {}
                }
            }
            expand_use(&inner[start..], &base, out);
        }
        None => {
            let path = tree.split(" as ").next().unwrap_or(tree);
            let mut full = prefix.to_vec();
            full.extend(
                path.split("::")
                    .map(str::trim)
                    .filter(|s| !s.is_empty() && *s != "*")
                    .map(str::to_owned),
            );
            out.push(full);
        }
    }
}

/// The module file a path leads to: the longest prefix of the path that is
/// a module of the crate. `None` for paths outside the crate.
fn resolve(from: &ModPath, path: &[String], mods: &BTreeMap<ModPath, PathBuf>) -> Option<ModPath> {
    // `a/b.rs` and `a/b/mod.rs` are both module a::b: `self` is a::b there.
    let mut base: ModPath = match path.first()?.as_str() {
        "crate" => Vec::new(),
        "self" | "super" => from.clone(),
        _ => return None,
    };
    let mut segs = &path[1..];
    if path[0] == "super" {
        base.pop()?;
    }
    while segs.first().is_some_and(|s| s == "super") {
        base.pop()?;
        segs = &segs[1..];
    }
    let mut best = mods.contains_key(&base).then(|| base.clone());
    let mut cur = base;
    for s in segs {
        cur.push(s.clone());
        if mods.contains_key(&cur) {
            best = Some(cur.clone());
        } else {
            break;
        }
    }
    best
}

fn name(m: &ModPath) -> String {
    if m.is_empty() {
        "crate".to_owned()
    } else {
        m.join("::")
    }
}

/// The dependency graph of `src/`: file -> the files it names.
fn graph() -> BTreeMap<ModPath, BTreeSet<ModPath>> {
    let mods = modules();
    let mut edges: BTreeMap<ModPath, BTreeSet<ModPath>> = BTreeMap::new();
    for (module, path) in &mods {
        if is_test_file(path) {
            continue;
        }
        let code = code_of(&std::fs::read_to_string(path).unwrap());
        let targets = edges.entry(module.clone()).or_default();
        for p in paths_in(&code) {
            if let Some(to) = resolve(module, &p, &mods)
                && &to != module
                && !is_test_file(&mods[&to])
            {
                targets.insert(to);
            }
        }
    }
    edges
}

/// One cycle, if the graph has any: the files around it.
fn find_cycle(edges: &BTreeMap<ModPath, BTreeSet<ModPath>>) -> Option<Vec<ModPath>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        n: &ModPath,
        edges: &BTreeMap<ModPath, BTreeSet<ModPath>>,
        marks: &mut BTreeMap<ModPath, Mark>,
        stack: &mut Vec<ModPath>,
    ) -> Option<Vec<ModPath>> {
        match marks.get(n) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let from = stack.iter().position(|s| s == n).unwrap_or(0);
                let mut cycle = stack[from..].to_vec();
                cycle.push(n.clone());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(n.clone(), Mark::Open);
        stack.push(n.clone());
        for m in edges.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, edges, marks, stack) {
                return Some(c);
            }
        }
        stack.pop();
        marks.insert(n.clone(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for n in edges.keys() {
        if let Some(c) = visit(n, edges, &mut marks, &mut Vec::new()) {
            return Some(c);
        }
    }
    None
}

/// Every file that lies on some cycle, with the files of the same cycles it
/// names: what to untangle, all at once rather than one cycle per run.
fn tangled(edges: &BTreeMap<ModPath, BTreeSet<ModPath>>) -> Vec<String> {
    let reaches = |from: &ModPath, to: &ModPath| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.clone()];
        while let Some(n) = todo.pop() {
            for m in edges.get(&n).into_iter().flatten() {
                if m == to {
                    return true;
                }
                if seen.insert(m.clone()) {
                    todo.push(m.clone());
                }
            }
        }
        false
    };
    let mut out = Vec::new();
    for (from, tos) in edges {
        let back: Vec<String> = tos.iter().filter(|t| reaches(t, from)).map(name).collect();
        if !back.is_empty() {
            out.push(format!("{} -> {}", name(from), back.join(", ")));
        }
    }
    out
}

#[test]
fn src_has_no_import_cycle() {
    let edges = graph();
    assert!(
        edges.len() > 20,
        "too few modules found: {:?}",
        edges.keys()
    );
    if let Some(cycle) = find_cycle(&edges) {
        let names: Vec<String> = cycle.iter().map(name).collect();
        panic!(
            "import cycle in src/: {}\nevery edge on a cycle:\n  {}",
            names.join(" -> "),
            tangled(&edges).join("\n  ")
        );
    }
}

#[test]
fn no_module_imports_the_daemon_or_the_binary() {
    let edges = graph();
    let daemon = ["daemon".to_owned()];
    for (from, to) in &edges {
        let top = from.first().map(String::as_str);
        if matches!(top, Some("daemon" | "commands")) || from.is_empty() {
            continue;
        }
        assert!(
            !to.iter().any(|t| t.first() == daemon.first()),
            "{} imports from daemon/",
            name(from)
        );
    }
}

// The checker itself, on small inputs: a checker that saw no edges would
// pass every tree.

fn tiny_modules(names: &[&str]) -> BTreeMap<ModPath, PathBuf> {
    names
        .iter()
        .map(|n| {
            let m: ModPath = n
                .split("::")
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            (m, PathBuf::from(format!("{n}.rs")))
        })
        .collect()
}

#[test]
fn use_groups_and_inline_paths_are_found() {
    let code = code_of(
        "use crate::a::{b::C, d::{E, F}};\n// use crate::commented::X;\nfn f() { let s = \"crate::in_string::x\"; crate::g::h(); }\n",
    );
    let found: BTreeSet<String> = paths_in(&code).iter().map(|p| p.join("::")).collect();
    for want in [
        "crate::a::b::C",
        "crate::a::d::E",
        "crate::a::d::F",
        "crate::g::h",
    ] {
        assert!(found.contains(want), "{want} not in {found:?}");
    }
    assert!(
        !found
            .iter()
            .any(|p| p.contains("commented") || p.contains("in_string"))
    );
}

#[test]
fn paths_resolve_to_the_longest_module_prefix_and_super_climbs() {
    let mods = tiny_modules(&["", "a", "a::b", "c"]);
    let p = |s: &str| s.split("::").map(str::to_owned).collect::<Vec<_>>();
    let from: ModPath = vec!["a".into(), "b".into()];
    assert_eq!(
        resolve(&from, &p("crate::a::b::Item"), &mods),
        Some(from.clone())
    );
    assert_eq!(
        resolve(&from, &p("super::Item"), &mods),
        Some(vec!["a".into()])
    );
    assert_eq!(
        resolve(&from, &p("super::super::c::f"), &mods),
        Some(vec!["c".into()])
    );
    assert_eq!(resolve(&from, &p("std::io"), &mods), None);
}

#[test]
fn test_modules_are_not_edges_and_a_cycle_is_reported() {
    let code = code_of(
        "fn a() {}\n#[cfg(test)]\nmod tests {\n    use crate::x::Y;\n    fn t() { if true { } }\n}\nfn b() { crate::z::w(); }\n",
    );
    let found: Vec<String> = paths_in(&code).iter().map(|p| p.join("::")).collect();
    assert_eq!(found, vec!["crate::z::w".to_owned()]);

    let m = |s: &str| -> ModPath { vec![s.to_owned()] };
    let mut edges = BTreeMap::new();
    edges.insert(m("a"), BTreeSet::from([m("b")]));
    edges.insert(m("b"), BTreeSet::from([m("c")]));
    edges.insert(m("c"), BTreeSet::from([m("a")]));
    let cycle = find_cycle(&edges).expect("a -> b -> c -> a");
    assert_eq!(cycle.first(), cycle.last());
    assert_eq!(cycle.len(), 4);
    edges.insert(m("c"), BTreeSet::new());
    assert_eq!(find_cycle(&edges), None);
}
