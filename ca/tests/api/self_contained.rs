//! The repository is self-contained: no test, benchmark, script or build file names a
//! relative path that climbs out of the repository (a user's clone has nothing beside it), and
//! none names the workplace's shared corpus folder. Test data lives in `tests/vectors/`.

use std::path::{Path, PathBuf};

/// Folders that are not part of the source tree.
const SKIPPED_DIRS: &[&str] = &[".git", "target", "corpus", "artifacts"];
/// Files whose relative paths are read by code or tools at run time.
const CHECKED_EXTENSIONS: &[&str] = &["rs", "sh", "toml", "py", "yml", "yaml"];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the ca crate sits in the repository root")
        .to_path_buf()
}

fn source_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            if !SKIPPED_DIRS.contains(&name.as_str()) {
                source_files(&path, out);
            }
        } else if kind.is_file() {
            let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
            if CHECKED_EXTENSIONS.contains(&ext) || name == "run" {
                out.push(path);
            }
        }
    }
}

/// The directory relative paths in `file` are resolved from: the crate root for files inside
/// a crate (`env!("CARGO_MANIFEST_DIR")`, `sqlx::migrate!`, Cargo's `path =`), else the
/// repository root (scripts `cd` there first). Returned as its depth below the repository root.
fn base_depth(root: &Path, file: &Path) -> usize {
    let mut dir = file.parent();
    while let Some(d) = dir {
        if d == root {
            break;
        }
        if d.join("Cargo.toml").is_file() {
            return d
                .strip_prefix(root)
                .map(|p| p.components().count())
                .unwrap_or(0);
        }
        dir = d.parent();
    }
    0
}

/// Every path-like token of `line` that contains a `..` component.
fn dotdot_tokens(line: &str) -> Vec<&str> {
    let is_path_char = |c: char| c.is_ascii_alphanumeric() || "._/-".contains(c);
    let mut tokens = Vec::new();
    let mut rest = line;
    let mut offset = 0;
    while let Some(i) = rest.find("../") {
        let at = offset + i;
        let start = line[..at]
            .rfind(|c: char| !is_path_char(c))
            .map_or(0, |p| p + 1);
        let end = line[at..]
            .find(|c: char| !is_path_char(c))
            .map_or(line.len(), |p| at + p);
        tokens.push(&line[start..end]);
        offset = end.max(at + 3);
        rest = &line[offset..];
    }
    tokens
}

/// Whether `path`, resolved from a directory `depth` levels below the root, leaves the root.
fn escapes(path: &str, depth: usize) -> bool {
    let mut level = depth as isize;
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                level -= 1;
                if level < 0 {
                    return true;
                }
            }
            _ => level += 1,
        }
    }
    false
}

#[test]
fn the_checker_sees_a_path_out_of_the_repository() {
    // Built from pieces so that this file does not trip its own check.
    let outside = format!("{}/{}/{}/testdata", "..", "..", "shared");
    let line = format!("    .join(\"{outside}\")");
    assert_eq!(dotdot_tokens(&line), vec![outside.as_str()]);
    assert!(
        escapes(&outside, 1),
        "from a crate root, two levels up leave the repository"
    );
    assert!(!escapes(&format!("{}/tests/vectors", ".."), 1));
    assert!(!escapes(&format!("{}/attestor", ".."), 1));
    assert!(escapes(&format!("{}/x", ".."), 0));
}

#[test]
fn no_file_names_a_path_outside_the_repository() {
    let root = repo_root();
    let mut files = Vec::new();
    source_files(&root, &mut files);
    assert!(files.len() > 50, "only {} source files found", files.len());
    let shared_corpus = format!("shared/{}", "testdata");
    let mut problems = Vec::new();
    for file in &files {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        let depth = base_depth(&root, file);
        let shown = file
            .strip_prefix(&root)
            .unwrap_or(file)
            .display()
            .to_string();
        // A `#[path]` attribute is resolved from the file's own directory, not its crate's.
        let file_depth = file
            .parent()
            .and_then(|d| d.strip_prefix(&root).ok())
            .map_or(0, |d| d.components().count());
        for (n, line) in text.lines().enumerate() {
            let from = if line.trim_start().starts_with("#[path") {
                file_depth
            } else {
                depth
            };
            for token in dotdot_tokens(line) {
                if escapes(token, from) {
                    problems.push(format!(
                        "{shown}:{}: `{token}` leaves the repository",
                        n + 1
                    ));
                }
            }
            if line.contains(&shared_corpus) {
                problems.push(format!(
                    "{shown}:{}: reads the workplace's corpus; copy what is needed into tests/vectors/",
                    n + 1
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_vectors_the_tests_read_are_in_the_repository() {
    let vectors = repo_root().join("tests/vectors");
    for file in [
        "README.md",
        "wycheproof/ecdsa_secp256r1_sha256_test.json",
        "wycheproof/ed25519_test.json",
        "wycheproof/LICENSE",
        "x509-limbo/limbo.json",
        "x509-limbo/LICENSE",
    ] {
        assert!(
            vectors.join(file).is_file(),
            "tests/vectors/{file} is missing"
        );
    }
}
