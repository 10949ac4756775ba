//! Acceptance 4 and 5: the example policy repository's own tests pass and its fleet rules
//! hold; invalid policy directories are refused with `file:line:column` messages.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};
use vouch_policy::bundle::{load_dir, Problem};
use vouch_policy::cases::run_dir;

fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/policies")
}

/// A copy of the example repository in a temp dir, to break.
fn copy_example() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for sub in ["", "policies", "tests"] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        for entry in std::fs::read_dir(example().join(sub)).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() {
                std::fs::copy(entry.path(), dir.path().join(sub).join(entry.file_name())).unwrap();
            }
        }
    }
    dir
}

fn problems(dir: &Path) -> Vec<Problem> {
    load_dir(dir).expect_err("the directory must not load").0
}

#[test]
fn the_example_repository_passes_its_own_tests() {
    let bundle = load_dir(&example()).unwrap();
    assert_eq!(bundle.policies.policies().count(), 4);
    let results = run_dir(&example(), &bundle).unwrap();
    assert!(results.len() >= 12);
    for r in &results {
        assert!(r.failure.is_none(), "{}: {:?}", r.name, r.failure);
    }
    // The fleet rules named in the issue are among the cases.
    for name in [
        "sensor sends telemetry to a gateway over mqtt",
        "sensor may not send to the cloud",
        "gateway without TLS is denied",
        "a quarantined sensor is denied what an active one may do",
    ] {
        assert!(results.iter().any(|r| r.name.ends_with(name)), "{name}");
    }
}

#[test]
fn a_wrong_expectation_fails() {
    let dir = copy_example();
    let path = dir.path().join("tests/fleet.json");
    let text = std::fs::read_to_string(&path).unwrap();
    // The gateway-without-TLS case now claims an allow.
    let broken = text.replacen(
        "\"tls\": false, \"mtls\": false, \"size\": 4096 },\n      \"expect\": \"deny\"",
        "\"tls\": false, \"mtls\": false, \"size\": 4096 },\n      \"expect\": \"allow\"",
        1,
    );
    assert_ne!(broken, text);
    std::fs::write(&path, broken).unwrap();
    let bundle = load_dir(dir.path()).unwrap();
    let results = run_dir(dir.path(), &bundle).unwrap();
    let failed: Vec<_> = results.iter().filter(|r| r.failure.is_some()).collect();
    assert_eq!(failed.len(), 1);
    assert!(failed[0].name.ends_with("gateway without TLS is denied"));
}

#[test]
fn a_syntax_error_is_located() {
    let dir = copy_example();
    std::fs::write(
        dir.path().join("policies/bad.cedar"),
        "// first line\npermit (principal, action, resource)\nwhen { context.tls && };\n",
    )
    .unwrap();
    let p = problems(dir.path());
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(
        (p[0].file.as_str(), p[0].line),
        ("policies/bad.cedar", 3),
        "{}",
        p[0]
    );
    assert!(p[0].column > 1);
}

#[test]
fn a_schema_violation_is_located() {
    let dir = copy_example();
    std::fs::write(
        dir.path().join("policies/bad.cedar"),
        "@id(\"bad\")\npermit (principal, action == Action::\"send\", resource)\nwhen {\n  principal.firmware == \"1.2\"\n};\n",
    )
    .unwrap();
    let p = problems(dir.path());
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(
        (p[0].file.as_str(), p[0].line),
        ("policies/bad.cedar", 4),
        "{}",
        p[0]
    );
    assert!(p[0].message.contains("firmware"), "{}", p[0]);
}

#[test]
fn an_unknown_entity_type_is_located() {
    let dir = copy_example();
    std::fs::write(
        dir.path().join("policies/bad.cedar"),
        "@id(\"robots\")\npermit (\n  principal == Robot::\"r2\",\n  action,\n  resource\n);\n",
    )
    .unwrap();
    let p = problems(dir.path());
    assert!(!p.is_empty());
    assert!(
        p.iter()
            .all(|p| p.file == "policies/bad.cedar" && p.line >= 1),
        "{p:?}"
    );
    assert!(p.iter().any(|p| p.message.contains("Robot")), "{p:?}");
}

#[test]
fn duplicate_ids_are_refused() {
    let dir = copy_example();
    std::fs::write(
        dir.path().join("policies/zz-copy.cedar"),
        "@id(\"quarantine\")\nforbid (principal, action, resource);\n",
    )
    .unwrap();
    let p = problems(dir.path());
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].file, "policies/zz-copy.cedar");
    assert!(
        p[0].message.contains("duplicate policy id `quarantine`"),
        "{}",
        p[0]
    );
    assert!(
        p[0].message.contains("policies/quarantine.cedar"),
        "{}",
        p[0]
    );
}

#[test]
fn a_broken_schema_and_fleet_file_are_located() {
    let dir = copy_example();
    let schema = dir.path().join("schema.cedarschema");
    let text = std::fs::read_to_string(&schema).unwrap();
    std::fs::write(&schema, text.replace("entity Zone = {", "entity Zone = {{")).unwrap();
    std::fs::write(
        dir.path().join("fleet.json"),
        "{\n  \"zones\": {},\n  \"oops\": 1\n}\n",
    )
    .unwrap();
    let p = problems(dir.path());
    let schema_p = p
        .iter()
        .find(|p| p.file == "schema.cedarschema")
        .expect("schema problem");
    assert!(schema_p.line > 1, "{schema_p}");
    let fleet_p = p
        .iter()
        .find(|p| p.file == "fleet.json")
        .expect("fleet problem");
    assert_eq!(fleet_p.line, 3, "{fleet_p}");
}

#[test]
fn an_oversized_policy_file_is_refused_before_parsing() {
    let dir = copy_example();
    let big = "// x\n".repeat(300_000);
    std::fs::write(dir.path().join("policies/big.cedar"), big).unwrap();
    let p = problems(dir.path());
    assert!(p
        .iter()
        .any(|p| p.file == "policies/big.cedar" && p.message.contains("larger than")));
}

/// A policy directory holds regular files only: a symbolic link to a secret beside the
/// policies (here one that even parses as a policy, so it would ship in the bundle) is refused
/// without being read, and so are directories posing as policy files and a linked `policies`.
#[test]
fn symbolic_links_and_non_regular_files_are_refused_unread() {
    use std::os::unix::fs::symlink;
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("bootstrap-token.key");
    let secret_text = "permit(principal, action, resource); // s3cr3t-key-material";
    std::fs::write(&secret, secret_text).unwrap();

    let refused = |dir: &Path, file: &str, why: &str| {
        let found = problems(dir);
        assert!(
            found
                .iter()
                .any(|p| p.file == file && p.message.contains(why)),
            "{file}: {found:?}"
        );
        assert!(
            found.iter().all(|p| !p.message.contains("s3cr3t")),
            "the link's target was read: {found:?}"
        );
    };

    let dir = copy_example();
    symlink(&secret, dir.path().join("policies/leak.cedar")).unwrap();
    refused(dir.path(), "policies/leak.cedar", "symbolic link");

    let dir = copy_example();
    let fleet = dir.path().join("fleet.json");
    std::fs::rename(&fleet, outside.path().join("fleet.json")).unwrap();
    symlink(outside.path().join("fleet.json"), &fleet).unwrap();
    refused(dir.path(), "fleet.json", "symbolic link");

    let dir = copy_example();
    std::fs::create_dir(dir.path().join("policies/nested.cedar")).unwrap();
    refused(dir.path(), "policies/nested.cedar", "not a regular file");

    let dir = copy_example();
    symlink(&secret, dir.path().join("reference-values.json")).unwrap();
    refused(dir.path(), "reference-values.json", "symbolic link");

    let dir = copy_example();
    let policies = dir.path().join("policies");
    std::fs::rename(&policies, outside.path().join("policies")).unwrap();
    symlink(outside.path().join("policies"), &policies).unwrap();
    refused(dir.path(), "policies", "not a directory");

    // The unbroken copy still loads: the refusals above are about the links only.
    assert!(load_dir(copy_example().path()).is_ok());
}
