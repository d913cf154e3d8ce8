//! The crate's layers, held to one direction: every `crate::` path in `src/**/*.rs` may name
//! its own layer or one listed before it, never one after it, and no two folders may import each
//! other. The order is the one `src/lib.rs` documents.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Bottom to top.
const LAYERS: [&str; 7] = ["rng", "io", "gpu", "model", "measure", "prune", "commands"];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The layer a source file belongs to: its top folder or file under `src/` (`None` for the
/// crate roots, which may name every layer).
fn layer_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next()?.as_os_str().to_string_lossy().into_owned();
    let name = first.trim_end_matches(".rs").to_string();
    (name != "lib" && name != "main").then_some(name)
}

/// The code without its comments and string literals, so that a doc comment or a message that
/// mentions `crate::x` is not read as an import.
fn code_only(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '"' => {
                let mut escaped = false;
                for c in chars.by_ref() {
                    if escaped {
                        escaped = false;
                    } else if c == '\\' {
                        escaped = true;
                    } else if c == '"' {
                        break;
                    }
                }
                out.push_str("\"\"");
            }
            _ => out.push(c),
        }
    }
    out
}

/// The first path segment of every `crate::` reference: `crate::a::b` gives `a`,
/// `crate::{a::b, c}` gives `a` and `c`.
fn crate_references(text: &str) -> BTreeSet<String> {
    let code = code_only(text);
    let mut found = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue; // `$crate::` in a macro, or a name ending in "crate"
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut item = String::new();
            let mut items = Vec::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ => {}
                }
                if depth == 0 {
                    break;
                }
                if c == ',' && depth == 1 {
                    items.push(std::mem::take(&mut item));
                } else {
                    item.push(c);
                }
            }
            items.push(item);
            for item in items {
                let head: String = item.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if !head.is_empty() {
                    found.insert(head);
                }
            }
        } else {
            let head: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            found.insert(head);
        }
    }
    found
}

/// Each layer's imports of other layers, with the files that make them.
fn imports(src: &Path) -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let mut files = Vec::new();
    sources(src, &mut files);
    let mut map: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    for file in files {
        let Some(layer) = layer_of(src, &file) else { continue };
        let text = std::fs::read_to_string(&file).unwrap();
        for target in crate_references(&text) {
            // Macros exported at the crate root (`crate::bail!`) belong to `io::error`.
            let target = if LAYERS.contains(&target.as_str()) { target } else { "io".to_string() };
            if target != layer {
                map.entry(layer.clone()).or_default().entry(target).or_default().push(file.display().to_string());
            }
        }
    }
    map
}

/// The breaches of the rule in `src`: upward imports and pairs of folders importing each other.
fn breaches(src: &Path) -> Vec<String> {
    let rank = |l: &str| LAYERS.iter().position(|x| *x == l);
    let map = imports(src);
    let mut found = Vec::new();
    for (layer, targets) in &map {
        let Some(own) = rank(layer) else {
            found.push(format!("src/{layer} is in no layer; add it to LAYERS (and to src/lib.rs's list)"));
            continue;
        };
        for (target, files) in targets {
            match rank(target) {
                Some(t) if t > own => {
                    found.push(format!("{layer} imports the higher layer {target} in {}", files.join(", ")))
                }
                None => found.push(format!("{} names crate::{target}, which is in no layer", files.join(", "))),
                _ => {}
            }
            if map.get(target).is_some_and(|back| back.contains_key(layer)) && layer < target {
                found.push(format!("{layer} and {target} import each other"));
            }
        }
    }
    found
}

#[test]
fn imports_only_go_down_the_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let found = breaches(&src);
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn an_upward_import_is_caught() {
    // A copy of the tree with one planted upward import: gpu naming the prune layer.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let copy = std::env::temp_dir().join(format!("neuroal-architecture-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&copy);
    let mut files = Vec::new();
    sources(&src, &mut files);
    for file in &files {
        let to = copy.join(file.strip_prefix(&src).unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(file, &to).unwrap();
    }
    let planted = copy.join("gpu").join("planted.rs");
    std::fs::write(&planted, "// crate::commands in a comment is no import\nuse crate::prune::mask::Ties;\nconst S: &str = \"crate::commands\";\n").unwrap();
    let found = breaches(&copy);
    let _ = std::fs::remove_dir_all(&copy);
    // The upward import, and (prune importing gpu) the two folders importing each other.
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(
        found[0].starts_with("gpu imports the higher layer prune in ") && found[0].ends_with("planted.rs"),
        "{}",
        found[0]
    );
    assert_eq!(found[1], "gpu and prune import each other");
}

#[test]
fn references_are_read_from_paths_and_groups() {
    let text = "use crate::{bail, io::error::Result, gpu::{kernels, tensor}};\nfn f() { crate::model::x(); $crate::io::y(); }\n// crate::commands\n";
    let got: Vec<String> = crate_references(text).into_iter().collect();
    assert_eq!(got, ["bail", "gpu", "io", "model"]);
}
