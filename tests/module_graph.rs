//! The daemon's module graph has no upward edge (docs/design.md, "Module layers").
//!
//! A module that imports a higher layer is how cycles start: `config` importing `server` meant
//! validating a config compiled the transports, and a change anywhere could break anything. This
//! reads every file under `src/`, finds each reference to another top-level module
//! (`crate::x`, `use crate::{x, ...}`, `$crate::x`, and `super::` chains that climb to the crate
//! root), and fails on any edge that does not point to a strictly lower layer. Comments and
//! string literals are ignored. A new top-level module must be given a layer here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Lowest layer first. A module may use only modules of strictly lower layers.
const LAYERS: &[&[&str]] = &[
    // Leaves: the TOML model and self-contained helpers; they import no other module.
    &[
        "config",
        "sealing",
        "log_escape",
        "hardening",
        "decode_gate",
        "fuzz_shapes",
    ],
    // Outbound clients to nodes, and the metrics registry (both read config only).
    &["outbound", "metrics"],
    // Storage engine: migrations, audit chain, persisted state.
    &["store"],
    // Who is calling and what they were granted (persisted in store).
    &["access"],
    // Stateful policy (the ledger), approvals, key backends.
    &["policy", "approvals", "backend"],
    // The pipeline.
    &["guard"],
    // Transports.
    &["server"],
    // Entry points.
    &["cli", "fuzz_harness"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// One reference from a file to another top-level module.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Edge {
    from: String,
    to: String,
    line: usize,
}

/// Blanks out comments, string/char literals (keeping newlines), so only code is scanned.
fn strip(src: &str) -> String {
    let c: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let blank = |ch: char| if ch == '\n' { '\n' } else { ' ' };
    let is_ident = |ch: char| ch.is_alphanumeric() || ch == '_';
    let mut i = 0;
    while i < c.len() {
        let next = c.get(i + 1).copied();
        if c[i] == '/' && next == Some('/') {
            while i < c.len() && c[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c[i] == '/' && next == Some('*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(c[i]));
                    i += 1;
                }
            }
        } else if c[i] == 'r'
            && (i == 0
                || !is_ident(c[i - 1])
                || (c[i - 1] == 'b' && (i < 2 || !is_ident(c[i - 2]))))
            && matches!(next, Some('"') | Some('#'))
        {
            // Raw string r"..." / r#"..."#: find the hashes, then the matching close.
            let mut j = i + 1;
            while c.get(j) == Some(&'#') {
                j += 1;
            }
            if c.get(j) != Some(&'"') {
                out.push(c[i]);
                i += 1;
                continue;
            }
            let hashes = j - i - 1;
            let close: Vec<char> = std::iter::once('"')
                .chain(std::iter::repeat_n('#', hashes))
                .collect();
            let mut k = j + 1;
            while k < c.len() && c[k..].iter().take(close.len()).ne(close.iter()) {
                k += 1;
            }
            let end = (k + close.len()).min(c.len());
            out.extend(c[i..end].iter().map(|&ch| blank(ch)));
            i = end;
        } else if c[i] == '"' {
            out.push(' ');
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' && i + 1 < c.len() {
                    out.push(blank(c[i]));
                    i += 1;
                }
                out.push(blank(c[i]));
                i += 1;
            }
            out.push(' ');
            i += 1;
        } else if c[i] == '\'' {
            // A char literal ('x', '\n', '\u{..}') or a lifetime ('a): only the former is skipped.
            let end = if next == Some('\\') {
                c[i + 2..]
                    .iter()
                    .position(|&ch| ch == '\'')
                    .map(|p| i + 3 + p)
            } else if c.get(i + 2) == Some(&'\'') {
                Some(i + 3)
            } else {
                None
            };
            match end {
                Some(e) => {
                    out.extend(std::iter::repeat_n(' ', e - i));
                    i = e;
                }
                None => {
                    out.push('\'');
                    i += 1;
                }
            }
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    PathSep,
    Punct(char),
}

fn tokens(code: &str) -> Vec<(Tok, usize)> {
    let c: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let (mut i, mut line) = (0, 1);
    while i < c.len() {
        let ch = c[i];
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch.is_alphabetic() || ch == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            out.push((Tok::Ident(c[start..i].iter().collect()), line));
        } else if ch == ':' && c.get(i + 1) == Some(&':') {
            out.push((Tok::PathSep, line));
            i += 2;
        } else {
            out.push((Tok::Punct(ch), line));
            i += 1;
        }
    }
    out
}

/// The first segments of a `{a, b::c, d::{e}}` group starting at `toks[start]` (the `{`).
fn group_heads(toks: &[(Tok, usize)], start: usize) -> Vec<(String, usize)> {
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut expect_head = true;
    for (t, line) in &toks[start..] {
        match t {
            Tok::Punct('{') => {
                depth += 1;
                expect_head = depth == 1;
            }
            Tok::Punct('}') => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            Tok::Punct(',') if depth == 1 => expect_head = true,
            Tok::Ident(name) if expect_head && depth == 1 => {
                heads.push((name.clone(), *line));
                expect_head = false;
            }
            _ => expect_head = false,
        }
    }
    heads
}

/// The top-level modules referenced by `src` (a file whose module path is `module`).
fn references(module: &[String], src: &str) -> Vec<(String, usize)> {
    let toks = tokens(&strip(src));
    let mut found = Vec::new();
    // Inline `mod name {` blocks: (name, brace depth at which they close).
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut braces = 0usize;
    let mut i = 0;
    while i < toks.len() {
        match &toks[i].0 {
            Tok::Punct('{') => braces += 1,
            Tok::Punct('}') => {
                braces = braces.saturating_sub(1);
                if inline.last().is_some_and(|(_, d)| *d == braces) {
                    inline.pop();
                }
            }
            Tok::Ident(kw) if kw == "mod" => {
                if let (Some((Tok::Ident(name), _)), Some((Tok::Punct('{'), _))) =
                    (toks.get(i + 1), toks.get(i + 2))
                {
                    inline.push((name.clone(), braces));
                }
            }
            Tok::Ident(head) if head == "crate" || head == "super" => {
                let after_sep = i > 0 && toks[i - 1].0 == Tok::PathSep;
                if after_sep {
                    i += 1;
                    continue;
                }
                // Where the path starts resolving: the crate root, or a module `super`s up.
                let mut j = i;
                let mut at_root = head == "crate";
                if head == "super" {
                    let path: Vec<&String> =
                        module.iter().chain(inline.iter().map(|(n, _)| n)).collect();
                    let mut ups = 0;
                    while toks.get(j).map(|t| &t.0) == Some(&Tok::Ident("super".into()))
                        && toks.get(j + 1).map(|t| &t.0) == Some(&Tok::PathSep)
                    {
                        ups += 1;
                        j += 2;
                    }
                    at_root = ups >= path.len();
                    j -= 2;
                }
                if at_root && toks.get(j + 1).map(|t| &t.0) == Some(&Tok::PathSep) {
                    match toks.get(j + 2) {
                        Some((Tok::Ident(name), line)) => found.push((name.clone(), *line)),
                        Some((Tok::Punct('{'), _)) => found.extend(group_heads(&toks, j + 2)),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
        i += 1;
    }
    found
}

/// `src/a/b.rs` and `src/a/b/mod.rs` are module `a::b`.
fn module_path(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let file = parts.pop().unwrap_or_default();
    let stem = file.trim_end_matches(".rs");
    if stem != "mod" {
        parts.push(stem.to_string());
    }
    parts
}

/// The edges of one file to other top-level modules (`top` lists them all).
fn file_edges(module: &[String], src: &str, top: &[String]) -> Vec<Edge> {
    let from = &module[0];
    references(module, src)
        .into_iter()
        .filter(|(to, _)| to != from && top.contains(to))
        .map(|(to, line)| Edge {
            from: from.clone(),
            to,
            line,
        })
        .collect()
}

/// An edge that does not point to a strictly lower layer (or touches a module without one).
fn goes_up(e: &Edge) -> bool {
    match (layer_of(&e.from), layer_of(&e.to)) {
        (Some(a), Some(b)) => b >= a,
        _ => true,
    }
}

fn violations(edges: &[Edge]) -> Vec<&Edge> {
    edges.iter().filter(|e| goes_up(e)).collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src/") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules `src/lib.rs` declares.
fn declared_modules(root: &Path) -> Vec<String> {
    let lib = std::fs::read_to_string(root.join("lib.rs")).expect("read src/lib.rs");
    let toks = tokens(&strip(&lib));
    toks.windows(3)
        .filter_map(|w| match (&w[0].0, &w[1].0, &w[2].0) {
            (Tok::Ident(m), Tok::Ident(name), Tok::Punct(';')) if m == "mod" => Some(name.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn src_has_no_upward_module_edge() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let top = declared_modules(&root);
    assert!(
        top.len() >= 10,
        "src/lib.rs declares too few modules: {top:?}"
    );
    let unplaced: Vec<_> = top.iter().filter(|m| layer_of(m).is_none()).collect();
    assert!(
        unplaced.is_empty(),
        "modules without a layer in tests/module_graph.rs (and docs/design.md): {unplaced:?}"
    );
    let stale: Vec<_> = LAYERS
        .iter()
        .flat_map(|l| l.iter())
        .filter(|m| !top.iter().any(|t| t == *m))
        .collect();
    assert!(
        stale.is_empty(),
        "layers name modules src/lib.rs does not declare: {stale:?}"
    );

    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let mut edges = Vec::new();
    let mut located = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&root).expect("under src/");
        if rel == Path::new("lib.rs") || rel == Path::new("main.rs") {
            continue;
        }
        let src = std::fs::read_to_string(file).expect("read source");
        for e in file_edges(&module_path(rel), &src, &top) {
            located.push(format!("src/{}:{}", rel.display(), e.line));
            edges.push(e);
        }
    }
    // The table (run with --nocapture to see it): from -> to, references.
    let mut table: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for e in &edges {
        *table.entry((&e.from, &e.to)).or_default() += 1;
    }
    for ((from, to), n) in &table {
        eprintln!("{from:>14} -> {to:<14} {n}");
    }
    // The scanner must see the real graph, or an empty result would pass vacuously.
    assert!(
        table.len() >= 25,
        "only {} module edges found: the scanner is broken",
        table.len()
    );
    assert!(table.contains_key(&("server", "guard")));
    assert!(table.contains_key(&("guard", "store")));

    let bad: Vec<String> = edges
        .iter()
        .zip(&located)
        .filter(|(e, _)| goes_up(e))
        .map(|(e, at)| format!("{at}: {} -> {} goes against the layers", e.from, e.to))
        .collect();
    assert!(bad.is_empty(), "upward module edges:\n{}", bad.join("\n"));
}

fn top() -> Vec<String> {
    LAYERS
        .iter()
        .flat_map(|l| l.iter().map(|m| m.to_string()))
        .collect()
}

fn path(p: &str) -> Vec<String> {
    p.split("::").map(String::from).collect()
}

fn bad_targets(module: &str, src: &str) -> Vec<String> {
    let edges = file_edges(&path(module), src, &top());
    violations(&edges).iter().map(|e| e.to.clone()).collect()
}

#[test]
fn negative_control_upward_edges_are_caught() {
    // The edge this layout removed: config importing a transport.
    assert_eq!(
        bad_targets("config", "pub x: Option<crate::server::bitcoin_node::Cfg>,"),
        ["server"]
    );
    assert_eq!(
        bad_targets("config::people", "use crate::server::X;\n"),
        ["server"]
    );
    // Groups, nested groups, macros, and super chains that climb to the root.
    assert_eq!(
        bad_targets(
            "access",
            "use crate::{config::C, backend::{a, b::c}, store};"
        ),
        ["backend"]
    );
    assert_eq!(bad_targets("store", "$crate::guard::x!()"), ["guard"]);
    assert_eq!(
        bad_targets("config::people", "use super::super::server::Upstream;"),
        ["server"]
    );
    assert_eq!(
        bad_targets("config", "mod tests { use super::super::access::quota; }"),
        ["access"]
    );
    // Same layer is not lower: access and store may not import each other both ways.
    assert_eq!(bad_targets("policy", "use crate::backend::K;"), ["backend"]);
    // A module with no layer is refused rather than ignored.
    let edges = file_edges(
        &path("guard"),
        "crate::newthing::f()",
        &["guard".to_string(), "newthing".to_string()],
    );
    assert_eq!(violations(&edges).len(), 1);
}

#[test]
fn downward_edges_comments_and_strings_pass() {
    // Positive controls: what the graph allows, and text that only looks like an edge.
    assert!(bad_targets("server", "use crate::{guard::Guard, config::Config};").is_empty());
    assert!(bad_targets("cli", "crate::server::run(crate::store::open())").is_empty());
    assert!(bad_targets("config", "// see crate::server::x\n/* crate::guard */").is_empty());
    assert!(bad_targets(
        "config",
        r##"let s = "crate::server::x"; let r = r#"crate::cli"#;"##
    )
    .is_empty());
    assert!(bad_targets("config", "let q = '\"'; let s = \"crate::server\";").is_empty());
    assert!(bad_targets(
        "config::people",
        "use super::parse_duration; pub(crate) fn f() {}"
    )
    .is_empty());
    // `super` inside a submodule stays inside its own top-level module.
    assert!(bad_targets("guard::bitcoin", "use super::server::x;").is_empty());
    // Lifetimes are not char literals: the reference after them is still seen.
    assert_eq!(
        bad_targets("config", "fn f<'a>(x: &'a str) -> crate::cli::X {}"),
        ["cli"]
    );
}
