//! The library's rooms and the one direction of their dependencies, checked from the source:
//! `cargo test -p pgjit --test architecture` fails on an import that points the wrong way
//! (the engine reaching into AWS, the contracts into the store, …), on an external crate a room
//! must not use (the AWS SDK in the engine, I/O in pure parsing), and on any import circle
//! between modules. lib.rs's crate doc is the map these rules enforce.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Each room and the rooms it may use ("basics" are the leaf modules every room may use).
const ROOMS: &[(&str, &[&str])] = &[
    ("basics", &[]),
    ("access", &["basics"]),
    ("audit", &["basics"]),
    ("engine", &["basics", "access"]),
    ("contract", &["basics", "access", "audit", "engine"]),
    ("aws", &["basics", "access", "audit", "engine", "contract"]),
    ("control", &["basics", "access", "audit", "engine", "contract", "aws"]),
];

/// Top-level modules that are basics rather than rooms of their own.
const BASICS: &[&str] = &["secret", "failpoint", "metrics"];

/// External crates a room must not name: the AWS SDK and Lambda outside the AWS side and the
/// control plane, and any I/O in the rooms that only parse and check.
const FORBIDDEN_CRATES: &[(&str, &[&str])] = &[
    ("basics", &["aws_", "lambda_runtime", "tokio_postgres"]),
    ("access", &["aws_", "lambda_runtime", "tokio_postgres", "tokio::", "std::fs", "std::net", "std::process"]),
    ("audit", &["aws_", "lambda_runtime", "tokio_postgres", "tokio::", "std::fs", "std::net", "std::process"]),
    ("engine", &["aws_", "lambda_runtime"]),
    ("contract", &["aws_", "lambda_runtime", "tokio_postgres"]),
];

/// A module's path (`engine::roles::grant`) from its file's path under `src/`.
fn module_of(relative: &str) -> String {
    let trimmed = relative.trim_end_matches(".rs");
    let mut parts: Vec<&str> = trimmed.split('/').collect();
    if matches!(parts.last(), Some(&"mod") | Some(&"lib")) {
        parts.pop();
    }
    parts.join("::")
}

fn room_of(module: &str) -> &str {
    let top = module.split("::").next().unwrap_or(module);
    if BASICS.contains(&top) {
        "basics"
    } else {
        top
    }
}

/// The source with comments, string literals and `#[cfg(test)]` modules blanked out (tests may
/// use anything; a `//` or a path inside a string is not code). Character literals are kept:
/// they hold no path.
fn code_of(source: &str) -> String {
    let bytes = source.as_bytes();
    let mut code = String::with_capacity(source.len());
    let mut i = 0;
    while i < bytes.len() {
        let rest = &source[i..];
        if rest.starts_with("//") {
            i += rest.find('\n').unwrap_or(rest.len());
        } else if rest.starts_with("/*") {
            // Block comments nest in Rust.
            let mut depth = 0;
            let mut j = 0;
            while j < rest.len() {
                if rest[j..].starts_with("/*") {
                    depth += 1;
                    j += 2;
                } else if rest[j..].starts_with("*/") {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += rest[j..].chars().next().map_or(1, char::len_utf8);
                }
            }
            i += j;
            code.push(' ');
        } else if let Some(hashes) = raw_string_start(rest) {
            let open = 2 + hashes + usize::from(rest.starts_with("br"));
            let close = format!("\"{}", "#".repeat(hashes));
            i += open + rest[open..].find(&close).map_or(rest.len() - open, |e| e + close.len());
            code.push_str("\"\"");
        } else if rest.starts_with('\'') {
            // A character literal (`'"'`, `'\''`, `'\u{22}'`) is skipped whole; a lifetime is code.
            let tail = &rest[1..];
            let len = if tail.starts_with('\\') {
                tail.get(2..).and_then(|t| t.find('\'')).map(|e| e + 4)
            } else {
                let c = tail.chars().next().map_or(0, char::len_utf8);
                tail[c..].starts_with('\'').then_some(c + 2)
            };
            match len {
                Some(len) => {
                    i += len;
                    code.push_str("' '");
                }
                None => {
                    code.push('\'');
                    i += 1;
                }
            }
        } else if rest.starts_with('"') || rest.starts_with("b\"") {
            let mut j = if rest.starts_with('"') { 1 } else { 2 };
            while j < rest.len() {
                match rest.as_bytes()[j] {
                    b'\\' => j += 2,
                    b'"' => {
                        j += 1;
                        break;
                    }
                    _ => j += 1,
                }
            }
            i += j.min(rest.len());
            code.push_str("\"\"");
        } else {
            let c = rest.chars().next().unwrap_or(' ');
            code.push(c);
            i += c.len_utf8();
        }
    }
    // `#[cfg(test)] mod …`: the whole module goes; on any other item the attribute is left, so
    // the item is read as code (an item hidden from tests is still checked).
    let mut from = 0;
    while let Some(at) = code[from..].find("#[cfg(test)]").map(|i| from + i) {
        let after = code[at + "#[cfg(test)]".len()..].trim_start();
        if !(after.starts_with("mod ") || after.starts_with("pub mod ") || after.starts_with("pub(crate) mod ")) {
            from = at + 1;
            continue;
        }
        let Some(open) = code[at..].find('{').map(|i| at + i) else { break };
        let mut depth = 0;
        let mut end = code.len();
        for (i, c) in code[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        code.replace_range(at..end, "");
        from = at;
    }
    code
}

/// The number of `#` of a raw string (`r"`, `r#"`, `br##"` …) starting `text`, if one does.
fn raw_string_start(text: &str) -> Option<usize> {
    let rest = text.strip_prefix("br").or_else(|| text.strip_prefix('r'))?;
    let hashes = rest.len() - rest.trim_start_matches('#').len();
    rest[hashes..].starts_with('"').then_some(hashes)
}

/// The paths a `crate::`/`super::` reference names, groups (`{a, b::c}`) expanded.
fn paths_after(text: &str) -> Vec<String> {
    let ident_len = |s: &str| s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(s.len());
    let mut out = Vec::new();
    if let Some(inner) = text.strip_prefix('{') {
        let mut depth = 0;
        let mut start = 0;
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    out.extend(paths_after(inner[start..i].trim()));
                    return out;
                }
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    out.extend(paths_after(inner[start..i].trim()));
                    start = i + 1;
                }
                _ => {}
            }
        }
        return out;
    }
    let mut path = String::new();
    let mut rest = text;
    loop {
        let len = ident_len(rest);
        if len == 0 {
            break;
        }
        if !path.is_empty() {
            path.push_str("::");
        }
        path.push_str(&rest[..len]);
        rest = &rest[len..];
        match rest.strip_prefix("::") {
            Some(after) if after.starts_with('{') => {
                out.push(path.clone());
                out.extend(paths_after(after).into_iter().map(|p| format!("{path}::{p}")));
                return out;
            }
            Some(after) => rest = after,
            None => break,
        }
    }
    if !path.is_empty() {
        out.push(path);
    }
    out
}

/// Whether a path starts at `at` (not in the middle of a word or of a longer path; a leading
/// `::`, as in `::aws_sdk_rds::Client`, starts one too).
fn starts_path(code: &str, at: usize) -> bool {
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let before = &code[..at];
    match before.strip_suffix("::") {
        Some(prefix) => !prefix.ends_with(|c: char| is_word(c) || c == '>' || c == ':'),
        None => !before.ends_with(is_word),
    }
}

/// Aliases of the crate (`use crate as c;`, `extern crate self as c;`) would hide paths from
/// the reader: there are none, and this says so if one comes.
fn crate_aliases(files: &BTreeMap<String, String>) -> Vec<String> {
    let mut found = Vec::new();
    for (module, source) in files {
        let code = code_of(source);
        let squeezed: String = code.split_whitespace().collect::<Vec<_>>().join(" ");
        for alias in ["crate as ", "crate::{self as ", "extern crate self"] {
            if squeezed.contains(alias) {
                found.push(format!("{module}: `{}…`", alias.trim()));
            }
        }
    }
    found
}

/// Module → the other modules it names (a child naming its own ancestors is part of them).
fn imports(files: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let modules: BTreeSet<String> = files.keys().cloned().collect();
    let longest = |segments: &[&str]| (1..=segments.len()).rev().map(|n| segments[..n].join("::")).find(|m| modules.contains(m));
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, source) in files {
        let code = code_of(source);
        let parent = module.rsplit_once("::").map(|(p, _)| p.to_owned()).unwrap_or_default();
        let targets = graph.entry(module.clone()).or_default();
        for keyword in ["crate::", "super::", "self::"] {
            let mut from = 0;
            while let Some(at) = code[from..].find(keyword).map(|i| from + i) {
                from = at + keyword.len();
                if !starts_path(&code, at) {
                    continue;
                }
                // `super::super::…` climbs once per `super`; `self::` stays in the module.
                let mut base = match keyword {
                    "crate::" => String::new(),
                    "super::" => parent.clone(),
                    _ => module.clone(),
                };
                while keyword == "super::" && code[from..].starts_with("super::") {
                    base = base.rsplit_once("::").map(|(p, _)| p.to_owned()).unwrap_or_default();
                    from += "super::".len();
                }
                for path in paths_after(&code[from..]) {
                    let full = if base.is_empty() { path } else { format!("{base}::{path}") };
                    let segments: Vec<&str> = full.split("::").collect();
                    if let Some(target) = longest(&segments) {
                        let ancestor = module.starts_with(&format!("{target}::"));
                        if target != *module && !ancestor && !target.is_empty() {
                            targets.insert(target);
                        }
                    }
                }
            }
        }
    }
    graph
}

/// Every import that breaks a room's rules, as `module -> module (room -> room)`.
fn wrong_way(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let allowed: BTreeMap<&str, &[&str]> = ROOMS.iter().copied().collect();
    let mut wrong = Vec::new();
    for (from, targets) in graph {
        let from_room = room_of(from);
        for to in targets {
            let to_room = room_of(to);
            let ok = from_room == to_room || allowed.get(from_room).is_some_and(|rooms| rooms.contains(&to_room));
            if !ok {
                wrong.push(format!("{from} -> {to} ({from_room} may not use {to_room})"));
            }
        }
    }
    wrong
}

/// The import circles (strongly connected components of more than one module).
fn circles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Tarjan's algorithm, iterative enough for a few dozen modules.
    struct State<'g> {
        graph: &'g BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        found: Vec<Vec<String>>,
    }
    fn visit<'g>(s: &mut State<'g>, v: &'g str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.graph.get(v).into_iter().flatten() {
            if !s.index.contains_key(w.as_str()) {
                visit(s, w);
                let low = s.low[v].min(s.low[w.as_str()]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w.as_str()) {
                let low = s.low[v].min(s.index[w.as_str()]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.to_owned());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.found.push(component);
            }
        }
    }
    let mut state = State { graph, index: BTreeMap::new(), low: BTreeMap::new(), stack: Vec::new(), on_stack: BTreeSet::new(), found: Vec::new() };
    for v in graph.keys() {
        if !state.index.contains_key(v.as_str()) {
            visit(&mut state, v);
        }
    }
    state.found
}

fn forbidden_crates(files: &BTreeMap<String, String>) -> Vec<String> {
    let mut found = Vec::new();
    for (module, source) in files {
        let code = code_of(source);
        for (room, crates) in FORBIDDEN_CRATES {
            if room_of(module) != *room {
                continue;
            }
            for name in *crates {
                let used = code.match_indices(name).any(|(at, _)| starts_path(&code, at));
                if used {
                    found.push(format!("{module} ({room}) uses {name}"));
                }
            }
        }
    }
    found
}

fn read_tree(dir: &Path, root: &Path, files: &mut BTreeMap<String, String>) {
    for entry in std::fs::read_dir(dir).expect("the source folder reads") {
        let path = entry.expect("a folder entry").path();
        if path.is_dir() {
            read_tree(&path, root, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let relative = path.strip_prefix(root).expect("under src").to_string_lossy().replace('\\', "/");
            files.insert(module_of(&relative), std::fs::read_to_string(&path).expect("a source file reads"));
        }
    }
}

fn library() -> BTreeMap<String, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = BTreeMap::new();
    read_tree(&root, &root, &mut files);
    files
}

#[test]
fn every_module_is_in_a_room_of_the_map() {
    let rooms: BTreeSet<&str> = ROOMS.iter().map(|(r, _)| *r).collect();
    let strays: Vec<String> = library().keys().filter(|m| !m.is_empty() && !rooms.contains(room_of(m))).cloned().collect();
    assert!(strays.is_empty(), "modules outside every room (add them to a room, and to lib.rs's map): {strays:?}");
}

#[test]
fn dependencies_point_one_way() {
    let graph = imports(&library());
    let wrong = wrong_way(&graph);
    assert!(wrong.is_empty(), "imports against the rooms' direction:\n{}", wrong.join("\n"));
}

#[test]
fn no_import_circle() {
    let found = circles(&imports(&library()));
    assert!(found.is_empty(), "import circles: {found:?}");
}

#[test]
fn the_engine_and_the_parsers_name_no_aws_crate_and_parsing_does_no_io() {
    let files = library();
    let found: Vec<String> = forbidden_crates(&files).into_iter().chain(crate_aliases(&files)).collect();
    assert!(found.is_empty(), "{}", found.join("\n"));
}

/// The checks themselves: an engine module reaching into the store (grouped, through
/// `super::super::`, after a string holding `//` or a quote, in an item that is only marked
/// `#[cfg(test)]`), a circle, AWS crates (also written `::aws_…`), I/O in a parser and an alias
/// of the crate are all caught; a test module, a comment and a string are not.
#[test]
fn the_checks_catch_what_they_are_for() {
    let files: BTreeMap<String, String> = [
        ("engine::roles", "use crate::{access::AccessSet, aws::store::Store};\n// crate::control::x in a comment\n/* crate::control::y */\n#[cfg(test)]\nmod t { use crate::control::grants; }"),
        ("engine::roles::grant", "const U: &str = \"https://x\"; const Q: char = '\"'; fn f() -> super::super::super::control::grants::G { todo!() }"),
        ("engine::pool", "use super::roles::RoleError;\nfn f() { crate::engine::setup::x(); }\nconst S: &str = \"crate::control::grants\";"),
        ("engine::setup", "use crate::engine::pool::Pool;\nfn g() -> aws_sdk_rds::Client { todo!() }\n#[cfg(test)]\nfn h() -> crate::aws::store::Store { todo!() }"),
        ("engine::catalog", "fn k() -> ::aws_config::SdkConfig { todo!() }"),
        ("audit::server_log", "fn r() { let _ = std::fs::read(\"/x\"); }"),
        ("contract::events", "use crate as pgjit_itself;"),
        ("aws::store", "pub struct Store;"),
        ("access", "pub struct AccessSet;"),
        ("control::grants", ""),
    ]
    .into_iter()
    .map(|(m, s)| (m.to_owned(), s.to_owned()))
    .collect();
    let graph = imports(&files);
    assert_eq!(graph["engine::roles"], BTreeSet::from(["access".to_owned(), "aws::store".to_owned()]));
    assert_eq!(graph["engine::roles::grant"], BTreeSet::from(["control::grants".to_owned()]));
    assert_eq!(
        wrong_way(&graph),
        vec![
            "engine::roles -> aws::store (engine may not use aws)".to_owned(),
            "engine::roles::grant -> control::grants (engine may not use control)".to_owned(),
            "engine::setup -> aws::store (engine may not use aws)".to_owned(),
        ]
    );
    assert_eq!(circles(&graph), vec![vec!["engine::pool".to_owned(), "engine::setup".to_owned()]]);
    assert_eq!(
        forbidden_crates(&files),
        vec!["audit::server_log (audit) uses std::fs".to_owned(), "engine::catalog (engine) uses aws_".to_owned(), "engine::setup (engine) uses aws_".to_owned()]
    );
    assert_eq!(crate_aliases(&files), vec!["contract::events: `crate as…`".to_owned()]);
}
