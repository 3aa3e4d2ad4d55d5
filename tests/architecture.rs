//! The module graph has no cycles, and the broker library stays in its adapter.
//!
//! A cycle between modules means neither can be understood, tested or moved without the
//! other; ARCHITECTURE.md's layering (config → components, adapters → core) is only true
//! while the graph is acyclic. This test reads the sources rather than trusting a
//! reviewer: every `.rs` file under `src/` (without comments, string contents and
//! `#[cfg(test)]` items, which may reach anywhere), its `use` trees and the paths in its
//! code (`crate::…`, `super::…`, `self::…`, a child module, a name a `use` brought in).
//! Names re-exported by a `pub use` are followed to the module that defines them, so a
//! parent's re-export is not mistaken for a dependency on the parent.
//!
//! The graph is checked twice: between top-level modules (`amqp`, `config`, …), and
//! between the files of each split module (a file is a module; `mod.rs` is its
//! directory). Any strongly connected component of more than one node fails the test
//! with the edges that close it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Split modules whose files must not depend on each other in a cycle.
const SPLIT: &[&str] = &["amqp", "okta", "pipeline", "ops", "okta_sim"];
/// Modules that form the pure core or decide, and so must not know the broker library.
const NO_LAPIN: &[&str] = &["src/pipeline", "src/domain", "src/trust"];

type ModPath = Vec<String>;

/// One source file, as far as the graph cares.
struct SourceFile {
    module: ModPath,
    /// Code without comments and string contents; `#[cfg(test)]` items kept.
    code_with_tests: String,
    /// As `code_with_tests`, without `#[cfg(test)]` items.
    code: String,
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read src/")
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/a/b.rs` → `[a, b]`; `src/a/mod.rs` → `[a]`; `src/lib.rs` → `[]`.
fn module_of(src: &Path, file: &Path) -> ModPath {
    let relative = file.strip_prefix(src).expect("under src/");
    let mut parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().expect("a file name");
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_owned());
    }
    parts
}

/// Blanks comments and the contents of string and character literals (keeping line
/// breaks), so that `"amqp://…"` or a doc comment naming a module is not read as code.
fn strip_comments_and_strings(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
        } else if c == 'r'
            && (next == Some('"') || next == Some('#'))
            && !chars
                .get(i.wrapping_sub(1))
                .is_some_and(|p| p.is_alphanumeric() || *p == '_')
        {
            // A raw string: r"…", r#"…"#.
            let mut j = i + 1;
            let mut hashes = 0;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            out.push_str("\"\"");
            j += 1;
            loop {
                if j >= chars.len() {
                    break;
                }
                if chars[j] == '"' && (0..hashes).all(|k| chars.get(j + 1 + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                out.push(blank(chars[j]));
                j += 1;
            }
            i = j;
        } else if c == '"' {
            out.push_str("\"\"");
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                }
                if let Some(&ch) = chars.get(i) {
                    out.push(blank(ch));
                }
                i += 1;
            }
            i += 1;
        } else if c == '\'' {
            // A character literal ('x', '\n', '\u{..}') or a lifetime ('a).
            if next == Some('\\') {
                let mut j = i + 2;
                while j < chars.len() && chars[j] != '\'' {
                    j += 1;
                }
                out.push_str("' '");
                i = j + 1;
            } else if chars.get(i + 2) == Some(&'\'') {
                out.push_str("' '");
                i += 3;
            } else {
                out.push(c);
                i += 1;
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// Removes every item marked `#[cfg(test)]` (a test module, function or `use`), and
/// returns the names of test modules declared as files (`#[cfg(test)] mod tests;`).
fn strip_test_items(code: &str) -> (String, Vec<String>) {
    let bytes = code.as_bytes();
    let mut out = String::with_capacity(code.len());
    let mut file_modules = Vec::new();
    let mut i = 0;
    while i < code.len() {
        let rest = &code[i..];
        let is_cfg_test = rest.starts_with("#[cfg(test)]") || rest.starts_with("#![cfg(test)]");
        if !is_cfg_test {
            let ch = rest.chars().next().expect("not at the end");
            out.push(ch);
            i += ch.len_utf8();
            continue;
        }
        if rest.starts_with("#![cfg(test)]") {
            // The whole file is for tests.
            return (String::new(), file_modules);
        }
        // Skip to the end of the item: a `;` outside braces, or the brace that closes.
        let start = i;
        let mut j = i + "#[cfg(test)]".len();
        let mut depth = 0i32;
        let mut bracket = 0i32;
        while j < bytes.len() {
            match bytes[j] {
                b'[' => bracket += 1,
                b']' => bracket -= 1,
                b'{' => depth += 1,
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        j += 1;
                        break;
                    }
                }
                b';' if depth == 0 && bracket == 0 => {
                    j += 1;
                    break;
                }
                _ => {}
            }
            j += 1;
        }
        let item = &code[start..j.min(code.len())];
        let words: Vec<&str> = item
            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .filter(|w| !w.is_empty())
            .collect();
        if item.trim_end().ends_with(';') {
            if let Some(pos) = words.iter().position(|w| *w == "mod") {
                if let Some(name) = words.get(pos + 1) {
                    file_modules.push((*name).to_owned());
                }
            }
        }
        for ch in item.chars() {
            if ch == '\n' {
                out.push('\n');
            }
        }
        i = j.min(code.len());
    }
    (out, file_modules)
}

/// `use` trees flattened into paths, each with whether it is a `pub use` (a re-export)
/// and the local name it binds.
struct UsePath {
    segments: Vec<String>,
    binds: Option<String>,
    public: bool,
}

fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

fn flatten_use_tree(prefix: &[String], tree: &str, public: bool, out: &mut Vec<UsePath>) {
    let tree = tree.trim();
    if tree.is_empty() {
        return;
    }
    if let Some(open) = tree.find('{') {
        let head = tree[..open].trim().trim_end_matches("::");
        let inner = tree[open + 1..].trim_end().trim_end_matches('}');
        let mut base = prefix.to_vec();
        base.extend(segments_of(head));
        for part in split_top_level(inner) {
            flatten_use_tree(&base, part, public, out);
        }
        return;
    }
    let (path, alias) = match tree.split_once(" as ") {
        Some((path, alias)) => (path.trim(), Some(alias.trim().to_owned())),
        None => (tree, None),
    };
    let mut segments = prefix.to_vec();
    let own = segments_of(path);
    if own.as_slice() == ["self"] {
        // `a::{self, B}` names `a` itself.
        let binds = alias.or_else(|| segments.last().cloned());
        out.push(UsePath {
            segments,
            binds,
            public,
        });
        return;
    }
    segments.extend(own);
    let binds = match alias {
        Some(alias) => Some(alias),
        None => segments.last().filter(|s| *s != "*").cloned(),
    };
    out.push(UsePath {
        segments,
        binds,
        public,
    });
}

fn segments_of(path: &str) -> Vec<String> {
    path.split("::")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Every `use …;` of `code`, flattened.
fn use_paths(code: &str) -> Vec<UsePath> {
    let mut out = Vec::new();
    let mut search = 0;
    while let Some(found) = code[search..].find("use ") {
        let at = search + found;
        search = at + 4;
        let before = code[..at].chars().next_back();
        if before.is_some_and(is_ident_char) {
            continue;
        }
        let Some(end) = code[at..].find(';') else {
            break;
        };
        let tree = &code[at + 4..at + end];
        // `pub use`, `pub(crate) use`: a re-export.
        let line_start = code[..at].rfind(['\n', ';', '{', '}']).map_or(0, |p| p + 1);
        let public = code[line_start..at].contains("pub");
        flatten_use_tree(&[], tree, public, &mut out);
        search = at + end;
    }
    out
}

/// Every `a::b::c` path written in `code` outside `use` items.
fn code_paths(code: &str) -> Vec<Vec<String>> {
    let mut without_uses = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(found) = rest.find("use ") {
        let before = rest[..found].chars().next_back();
        if before.is_some_and(is_ident_char) {
            without_uses.push_str(&rest[..found + 4]);
            rest = &rest[found + 4..];
            continue;
        }
        without_uses.push_str(&rest[..found]);
        match rest[found..].find(';') {
            Some(end) => rest = &rest[found + end..],
            None => rest = "",
        }
    }
    without_uses.push_str(rest);

    let chars: Vec<char> = without_uses.chars().collect();
    let mut paths = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if !is_ident_char(chars[i])
            || (i > 0 && (is_ident_char(chars[i - 1]) || chars[i - 1] == ':'))
        {
            i += 1;
            continue;
        }
        let mut segments = Vec::new();
        let mut j = i;
        loop {
            let start = j;
            while j < chars.len() && is_ident_char(chars[j]) {
                j += 1;
            }
            if start == j {
                break;
            }
            segments.push(chars[start..j].iter().collect::<String>());
            if chars.get(j) == Some(&':') && chars.get(j + 1) == Some(&':') {
                j += 2;
            } else {
                break;
            }
        }
        if segments.len() > 1 {
            paths.push(segments);
        }
        i = j.max(i + 1);
    }
    paths
}

/// The module graph of the crate, at file granularity.
struct Graph {
    modules: BTreeSet<ModPath>,
    /// Per module: names re-exported by its `pub use`, and where they come from.
    reexports: BTreeMap<ModPath, BTreeMap<String, ModPath>>,
    edges: BTreeSet<(ModPath, ModPath)>,
}

impl Graph {
    /// The file module that `path` (absolute) ends in, following re-exports.
    fn resolve(&self, path: &[String]) -> Option<ModPath> {
        let mut depth = path.len();
        while depth > 0 && !self.modules.contains(&path[..depth]) {
            depth -= 1;
        }
        if depth == 0 {
            return None;
        }
        let mut module = path[..depth].to_vec();
        // Follow a re-export of the next segment (a bounded number of times).
        let mut rest = &path[depth..];
        for _ in 0..4 {
            let Some(name) = rest.first() else { break };
            let Some(target) = self.reexports.get(&module).and_then(|r| r.get(name)) else {
                break;
            };
            if *target == module {
                break;
            }
            module = target.clone();
            rest = &rest[1..];
        }
        Some(module)
    }
}

/// Makes `path`, as written in `module`, absolute: `crate::`, `super::`, `self::`, a
/// child module, or a name bound by a `use` of the same file.
fn absolute(
    module: &ModPath,
    path: &[String],
    children: &BTreeSet<ModPath>,
    bindings: &BTreeMap<String, Vec<String>>,
) -> Option<Vec<String>> {
    let first = path.first()?;
    match first.as_str() {
        "crate" => Some(path[1..].to_vec()),
        "self" => {
            let mut base = module.clone();
            base.extend_from_slice(&path[1..]);
            Some(base)
        }
        "super" => {
            let mut base = module.clone();
            let mut rest = path;
            while rest.first().is_some_and(|s| s == "super") {
                base.pop()?;
                rest = &rest[1..];
            }
            base.extend_from_slice(rest);
            Some(base)
        }
        _ => {
            let mut child = module.clone();
            child.push(first.clone());
            if children.contains(&child) {
                child.extend_from_slice(&path[1..]);
                return Some(child);
            }
            let bound = bindings.get(first)?;
            let mut base = bound.clone();
            base.extend_from_slice(&path[1..]);
            Some(base)
        }
    }
}

fn read_sources() -> Vec<(PathBuf, SourceFile)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut test_modules: BTreeSet<ModPath> = BTreeSet::new();
    let mut sources = Vec::new();
    for file in files {
        if file.file_name().is_some_and(|n| n == "main.rs") && file.parent() == Some(&src) {
            // The binary is another crate: it uses the library by its name.
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("read a source file");
        let code_with_tests = strip_comments_and_strings(&text);
        let (code, test_files) = strip_test_items(&code_with_tests);
        let module = module_of(&src, &file);
        for name in test_files {
            let mut test_module = module.clone();
            test_module.push(name);
            test_modules.insert(test_module);
        }
        sources.push((
            file,
            SourceFile {
                module,
                code_with_tests,
                code,
            },
        ));
    }
    // Files compiled only for tests are not part of the graph.
    sources.retain(|(_, s)| !test_modules.iter().any(|t| s.module.starts_with(t)));
    sources
}

fn build_graph(sources: &[(PathBuf, SourceFile)]) -> Graph {
    let modules: BTreeSet<ModPath> = sources.iter().map(|(_, s)| s.module.clone()).collect();
    let mut graph = Graph {
        modules: modules.clone(),
        reexports: BTreeMap::new(),
        edges: BTreeSet::new(),
    };
    // First the re-exports, so that later paths through them resolve to their origin.
    let mut per_file = Vec::new();
    for (_, source) in sources {
        let uses = use_paths(&source.code);
        let mut bindings = BTreeMap::new();
        let mut absolute_uses = Vec::new();
        for use_path in &uses {
            let Some(abs) = absolute(
                &source.module,
                &use_path.segments,
                &modules,
                &BTreeMap::new(),
            ) else {
                continue;
            };
            if let Some(name) = &use_path.binds {
                bindings.insert(name.clone(), abs.clone());
            }
            absolute_uses.push((abs, use_path.public, use_path.binds.clone()));
        }
        per_file.push((source, bindings, absolute_uses));
    }
    for _ in 0..3 {
        for (source, _, absolute_uses) in &per_file {
            for (abs, public, binds) in absolute_uses {
                if !public {
                    continue;
                }
                let (Some(name), Some(target)) = (binds, graph.resolve(abs)) else {
                    continue;
                };
                graph
                    .reexports
                    .entry(source.module.clone())
                    .or_default()
                    .insert(name.clone(), target);
            }
        }
    }
    for (source, bindings, absolute_uses) in &per_file {
        let mut targets = Vec::new();
        for (abs, public, _) in absolute_uses {
            // A module re-exporting its own child only names it; its users are resolved
            // through the re-export. Re-exporting anything else depends on it.
            let own_child = abs.len() > source.module.len() && abs.starts_with(&source.module);
            if !(*public && own_child) {
                targets.push(abs.clone());
            }
        }
        for path in code_paths(&source.code) {
            if let Some(abs) = absolute(&source.module, &path, &modules, bindings) {
                targets.push(abs);
            }
        }
        for target in targets {
            if let Some(to) = graph.resolve(&target) {
                if to != source.module && !to.is_empty() && !source.module.is_empty() {
                    graph.edges.insert((source.module.clone(), to));
                }
            }
        }
    }
    graph
}

/// Tarjan's strongly connected components of more than one node.
fn cycles(nodes: &BTreeSet<String>, edges: &BTreeSet<(String, String)>) -> Vec<Vec<String>> {
    struct State<'a> {
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        next: usize,
        found: Vec<Vec<String>>,
    }
    fn visit<'a>(node: &'a str, adjacency: &BTreeMap<&'a str, Vec<&'a str>>, s: &mut State<'a>) {
        s.index.insert(node, s.next);
        s.low.insert(node, s.next);
        s.next += 1;
        s.stack.push(node);
        s.on_stack.insert(node);
        for &to in adjacency.get(node).map(Vec::as_slice).unwrap_or(&[]) {
            if !s.index.contains_key(to) {
                visit(to, adjacency, s);
                let low = s.low[node].min(s.low[to]);
                s.low.insert(node, low);
            } else if s.on_stack.contains(to) {
                let low = s.low[node].min(s.index[to]);
                s.low.insert(node, low);
            }
        }
        if s.low[node] == s.index[node] {
            let mut component = Vec::new();
            while let Some(top) = s.stack.pop() {
                s.on_stack.remove(top);
                component.push(top.to_owned());
                if top == node {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.found.push(component);
            }
        }
    }
    let mut adjacency: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (from, to) in edges {
        adjacency.entry(from).or_default().push(to);
    }
    let mut state = State {
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        found: Vec::new(),
    };
    for node in nodes {
        if !state.index.contains_key(node.as_str()) {
            visit(node, &adjacency, &mut state);
        }
    }
    state.found
}

fn describe(level: &str, found: &[Vec<String>], edges: &BTreeSet<(String, String)>) -> String {
    let mut text = String::new();
    for component in found {
        text.push_str(&format!("\n{level}: cycle among {}", component.join(", ")));
        for (from, to) in edges {
            if component.contains(from) && component.contains(to) {
                text.push_str(&format!("\n    {from} → {to}"));
            }
        }
    }
    text
}

fn name(module: &[String]) -> String {
    module.join("::")
}

fn find_cycles() -> String {
    let sources = read_sources();
    let graph = build_graph(&sources);
    let mut report = String::new();

    let top = |m: &ModPath| m[0].clone();
    let nodes: BTreeSet<String> = graph
        .modules
        .iter()
        .filter(|m| !m.is_empty())
        .map(top)
        .collect();
    let edges: BTreeSet<(String, String)> = graph
        .edges
        .iter()
        .map(|(a, b)| (top(a), top(b)))
        .filter(|(a, b)| a != b)
        .collect();
    report.push_str(&describe("top level", &cycles(&nodes, &edges), &edges));

    for split in SPLIT {
        let inside = |m: &ModPath| m.first().is_some_and(|f| f == split);
        let nodes: BTreeSet<String> = graph
            .modules
            .iter()
            .filter(|m| inside(m))
            .map(|m| name(m))
            .collect();
        let edges: BTreeSet<(String, String)> = graph
            .edges
            .iter()
            .filter(|(a, b)| inside(a) && inside(b))
            .map(|(a, b)| (name(a), name(b)))
            .collect();
        report.push_str(&describe(split, &cycles(&nodes, &edges), &edges));
    }
    report
}

#[test]
fn the_module_graph_has_no_cycles() {
    let report = find_cycles();
    assert!(report.is_empty(), "import cycles:{report}");
}

#[test]
fn the_core_does_not_know_the_broker_library() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut offenders = Vec::new();
    for (file, source) in read_sources() {
        let relative = file.strip_prefix(root).expect("under the crate");
        if !NO_LAPIN.iter().any(|dir| relative.starts_with(dir)) {
            continue;
        }
        let mentions = source
            .code_with_tests
            .split(|c: char| !is_ident_char(c))
            .any(|word| word == "lapin");
        if mentions {
            offenders.push(relative.display().to_string());
        }
    }
    assert!(
        offenders.is_empty(),
        "lapin used outside the AMQP adapter: {}",
        offenders.join(", ")
    );
}

/// The checker itself: a cycle written in the forms the sources use is found, and
/// comments, strings and test modules do not make edges.
#[test]
fn the_checker_finds_cycles_and_ignores_comments_strings_and_tests() {
    let code = strip_comments_and_strings(
        "use crate::{a::b, c::{self, D}};\n// crate::x::y\nlet s = \"crate::z::w\";\n#[cfg(test)]\nmod tests { use crate::q::r; }\nsuper::sibling::f();",
    );
    let (code, _) = strip_test_items(&code);
    let uses: Vec<Vec<String>> = use_paths(&code).into_iter().map(|u| u.segments).collect();
    assert_eq!(
        uses,
        [
            vec!["crate", "a", "b"],
            vec!["crate", "c"],
            vec!["crate", "c", "D"]
        ]
    );
    let paths = code_paths(&code);
    assert_eq!(paths, [vec!["super", "sibling", "f"]]);

    let nodes: BTreeSet<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
    let edge = |a: &str, b: &str| (a.to_owned(), b.to_owned());
    let edges: BTreeSet<_> = [
        edge("a", "b"),
        edge("b", "c"),
        edge("c", "a"),
        edge("c", "d"),
    ]
    .into_iter()
    .collect();
    assert_eq!(cycles(&nodes, &edges), [vec!["a", "b", "c"]]);
    let edges: BTreeSet<_> = [edge("a", "b"), edge("b", "c"), edge("c", "d")]
        .into_iter()
        .collect();
    assert!(cycles(&nodes, &edges).is_empty());
}

/// Prints the graph's cycles without failing:
/// `cargo test --test architecture report -- --nocapture`.
#[test]
fn report() {
    let report = find_cycles();
    if !report.is_empty() {
        println!("import cycles:{report}");
    }
    // `ARCHITECTURE_EDGES=1` lists every edge between files, to see where one comes from.
    if std::env::var_os("ARCHITECTURE_EDGES").is_some() {
        let graph = build_graph(&read_sources());
        for (from, to) in &graph.edges {
            println!("{} → {}", name(from), name(to));
        }
    }
}
