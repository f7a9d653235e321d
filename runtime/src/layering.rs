//! Checks the crate's layering: the top-level modules form no import loop, a child module never
//! imports from its parent or another module it is nested in (only from its siblings or other
//! modules; `super::item` or `crate::parent::item` alike), and the children of any
//! module form no import loop either (`kv::draft` and `kv::host` may not import each other, nor
//! three siblings around a ring), so no two files import each other. Some modules are also
//! kept apart from a module or crate they must not know ([`APART`]: the admin-API client from
//! the command line). Imports are read from the sources (`crate::` and `super::` paths, groups
//! included); comments and test code do not count.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`, relative to it.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    files.sort();
    files
}

/// The module path of source file `file` (`kv/draft.rs` is `["kv", "draft"]`, `kv/mod.rs` is
/// `["kv"]`), and whether it is a `mod.rs`.
fn module_of(file: &Path) -> (Vec<String>, bool) {
    let is_mod_rs = file.file_name().is_some_and(|n| n == "mod.rs");
    let mut module: Vec<String> = file
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if is_mod_rs {
        module.pop();
    }
    (module, is_mod_rs)
}

/// Whether `path` (from the crate root) names a module of the sources in `src`.
fn is_module(src: &Path, path: &[String]) -> bool {
    let joined = path.join("/");
    src.join(format!("{joined}.rs")).exists() || src.join(&joined).join("mod.rs").exists()
}

/// The code of a source file: no test module, no comment lines.
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or("");
    text.lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The identifiers that follow `prefix` (`crate::` or `super::`), including those in a
/// `prefix{a, b}` group.
fn after<'a>(code: &'a str, prefix: &str) -> Vec<&'a str> {
    let mut names = Vec::new();
    for (i, _) in code.match_indices(prefix) {
        let before = code[..i].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let rest = &code[i + prefix.len()..];
        let group = rest
            .strip_prefix('{')
            .map(|g| &g[..g.find('}').unwrap_or(g.len())]);
        let items: Vec<&str> = match group {
            Some(group) => group.split(',').collect(),
            None => vec![rest],
        };
        for item in items {
            let item = item.trim();
            let end = item
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(item.len());
            if end > 0 {
                names.push(&item[..end]);
            }
        }
    }
    names
}

/// (module, what it must not name: a module of this crate or an external crate, why).
const APART: &[(&str, &str, &str)] = &[
    (
        "client",
        "cli",
        "the client takes plain values (`client::Admin`, `client::Deploy`, `api` requests); \
         `cli` maps its flags into them",
    ),
    (
        "client",
        "clap",
        "the client runs without the command line's parser",
    ),
];

#[test]
fn modules_kept_apart_never_name_each_other() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut wrong = Vec::new();
    for (module, not, why) in APART {
        let dir = src.join(module);
        let files: Vec<PathBuf> = match dir.is_dir() {
            true => sources(&dir).into_iter().map(|f| dir.join(f)).collect(),
            false => vec![src.join(format!("{module}.rs"))],
        };
        assert!(files.iter().all(|f| f.exists()), "no module `{module}`");
        for file in files {
            let code = code(&std::fs::read_to_string(&file).unwrap());
            let internal = after(&code, "crate::").contains(not);
            let external = !after(&code, &format!("{not}::")).is_empty()
                || code.contains(&format!("use {not};"));
            if internal || external {
                wrong.push(format!("{} names `{not}`: {why}", file.display()));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn top_level_modules_form_no_import_loop() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files = sources(&src);
    let top = |file: &Path| -> String {
        let first = file
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        first.trim_end_matches(".rs").to_owned()
    };
    let modules: BTreeSet<String> = files
        .iter()
        .map(|f| top(f))
        .filter(|m| m != "lib" && m != "main")
        .collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let from = top(file);
        if from == "lib" || from == "main" {
            continue;
        }
        let code = code(&std::fs::read_to_string(src.join(file)).unwrap());
        for to in after(&code, "crate::") {
            if modules.contains(to) && to != from {
                edges.entry(from.clone()).or_default().insert(to.to_owned());
            }
        }
    }
    // Depth-first search for a back edge.
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) {
        if let Some(at) = path.iter().position(|n| n == node) {
            panic!("import loop: {} -> {node}", path[at..].join(" -> "));
        }
        if done.contains(node) {
            return;
        }
        path.push(node.to_owned());
        for next in edges.get(node).into_iter().flatten() {
            visit(next, edges, path, done);
        }
        path.pop();
        done.insert(node.to_owned());
    }
    let mut done = BTreeSet::new();
    for module in &modules {
        visit(module, &edges, &mut Vec::new(), &mut done);
    }
}

#[test]
fn child_modules_never_import_from_their_parent() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut wrong = Vec::new();
    for file in sources(&src) {
        let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) else {
            continue;
        };
        if file.file_name().is_some_and(|n| n == "mod.rs") {
            continue;
        }
        let code = code(&std::fs::read_to_string(src.join(&file)).unwrap());
        for name in after(&code, "super::") {
            let sibling = src.join(dir).join(format!("{name}.rs"));
            let sibling_dir = src.join(dir).join(name).join("mod.rs");
            if !(sibling.exists() || sibling_dir.exists()) {
                wrong.push(format!("{} imports `super::{name}`", file.display()));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "child modules import from their parent module; import from the sibling module that \
         defines the item instead, so parent and child do not import each other:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn nested_modules_never_import_items_of_the_modules_around_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let is_module = |path: &[String]| is_module(&src, path);
    let mut wrong = Vec::new();
    for file in sources(&src) {
        let (module, is_mod_rs) = module_of(&file);
        let code = code(&std::fs::read_to_string(src.join(&file)).unwrap());
        for path in paths(&code, &module, is_mod_rs) {
            // `path[..modules]` names a module, `path[modules]` an item of it: wrong when that
            // module is one this file is nested in (`crate::a::X` from `a/b.rs` or `a/b/c.rs`).
            let mut modules = 0;
            while modules < path.len() && is_module(&path[..=modules]) {
                modules += 1;
            }
            let around =
                modules >= 1 && modules < module.len() && path[..modules] == module[..modules];
            if around && modules < path.len() {
                let named = path[..=modules].join("::");
                wrong.push(format!("{} imports `{named}`", file.display()));
            }
        }
    }
    wrong.sort();
    wrong.dedup();
    assert!(
        wrong.is_empty(),
        "modules import items of a module they are nested in (which declares them, so the two \
         import each other); move the item into a child module and import it from there:\n{}",
        wrong.join("\n")
    );
}

/// The module paths a file's code names through `crate::` or `super::`, resolved to paths from
/// the crate root (`super::host::X` in `kv/draft.rs` is `["kv", "host", "X"]`), including
/// those in a `prefix::{a::b, c}` group. `module` is the file's own module path.
fn paths(code: &str, module: &[String], is_mod_rs: bool) -> Vec<Vec<String>> {
    let ident = |s: &str| -> usize {
        s.find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(s.len())
    };
    let mut found = Vec::new();
    for prefix in ["crate::", "super::"] {
        for (i, _) in code.match_indices(prefix) {
            let before = code[..i].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let mut base: Vec<String> = if prefix == "crate::" {
                Vec::new()
            } else {
                // `super` of `kv/draft.rs` is `kv`; of `kv/mod.rs` it is the crate root.
                let up = if is_mod_rs { 2 } else { 1 };
                module[..module.len().saturating_sub(up)].to_vec()
            };
            let mut rest = &code[i + prefix.len()..];
            // Further `super::` and plain segments up to a group or an item.
            loop {
                if let Some(r) = rest.strip_prefix("super::") {
                    base.pop();
                    rest = r;
                    continue;
                }
                let end = ident(rest);
                if end == 0 || !rest[end..].starts_with("::") {
                    break;
                }
                base.push(rest[..end].to_owned());
                rest = &rest[end + 2..];
            }
            let items: Vec<&str> = match rest.strip_prefix('{') {
                Some(g) => g[..g.find('}').unwrap_or(g.len())].split(',').collect(),
                None => vec![rest],
            };
            for item in items {
                let mut path = base.clone();
                for segment in item.trim().split("::") {
                    let end = ident(segment);
                    if end == 0 {
                        break;
                    }
                    path.push(segment[..end].to_owned());
                    if end < segment.len() {
                        break;
                    }
                }
                found.push(path);
            }
        }
    }
    found
}

#[test]
fn sibling_modules_form_no_import_loop() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let is_module = |path: &[String]| is_module(&src, path);
    // (parent module, from child, to child) for every import between two children of a module.
    let mut edges: BTreeSet<(String, String, String)> = BTreeSet::new();
    for file in sources(&src) {
        let (module, is_mod_rs) = module_of(&file);
        if module.len() < 2 {
            continue; // top-level modules: `top_level_modules_form_no_import_loop`
        }
        let code = code(&std::fs::read_to_string(src.join(&file)).unwrap());
        for path in paths(&code, &module, is_mod_rs) {
            let common = module.iter().zip(&path).take_while(|(a, b)| a == b).count();
            if common == 0 || common >= module.len() || common >= path.len() {
                continue;
            }
            if !is_module(&path[..=common]) {
                continue; // an item of the parent: `child_modules_never_import_from_their_parent`
            }
            edges.insert((
                module[..common].join("::"),
                module[common].clone(),
                path[common].clone(),
            ));
        }
    }
    // Depth-first search for a loop among the children of each module.
    let mut by_parent: BTreeMap<&str, BTreeMap<&str, BTreeSet<&str>>> = BTreeMap::new();
    for (parent, from, to) in &edges {
        let children = by_parent.entry(parent).or_default();
        children.entry(from).or_default().insert(to);
    }
    fn visit<'a>(
        node: &'a str,
        edges: &BTreeMap<&'a str, BTreeSet<&'a str>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
        loops: &mut Vec<String>,
    ) {
        if let Some(at) = path.iter().position(|n| *n == node) {
            loops.push(format!("{} -> {node}", path[at..].join(" -> ")));
            return;
        }
        if done.contains(node) {
            return;
        }
        path.push(node);
        for next in edges.get(node).into_iter().flatten() {
            visit(next, edges, path, done, loops);
        }
        path.pop();
        done.insert(node);
    }
    let mut loops = Vec::new();
    for (parent, children) in &by_parent {
        let mut found = Vec::new();
        let mut done = BTreeSet::new();
        for child in children.keys() {
            visit(child, children, &mut Vec::new(), &mut done, &mut found);
        }
        loops.extend(found.into_iter().map(|l| format!("in {parent}: {l}")));
    }
    assert!(
        loops.is_empty(),
        "sibling modules import each other (directly or around a loop); move the shared piece \
         to the module that owns it (their parent) or to a small shared sibling:\n{}",
        loops.join("\n")
    );
}
