//! The SAM template against the workspace: every function it deploys is built from a binary
//! that exists, the way SAM's rust-cargolambda build and `cargo lambda` name it.

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// The `Binary:` of every `AWS::Serverless::Function`, by logical id.
fn template_functions() -> Vec<(String, Option<String>, bool)> {
    let text = std::fs::read_to_string(format!("{ROOT}/template.yaml")).expect("template.yaml");
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.trim() != "Type: AWS::Serverless::Function" {
            continue;
        }
        let name = lines[i - 1].trim().trim_end_matches(':').to_owned();
        // The resource's block: up to the next line at its own indentation.
        let block: Vec<&str> = lines[i + 1..].iter().take_while(|l| l.is_empty() || l.starts_with("    ")).copied().collect();
        let binary = block.iter().find_map(|l| l.trim().strip_prefix("Binary: ").map(str::to_owned));
        let cargo_lambda = block.iter().any(|l| l.trim() == "BuildMethod: rust-cargolambda");
        out.push((name, binary, cargo_lambda));
    }
    out
}

/// The binaries the workspace builds under functions/.
fn workspace_binaries() -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(format!("{ROOT}/functions")).unwrap() {
        let manifest = std::fs::read_to_string(entry.unwrap().path().join("Cargo.toml")).unwrap();
        let mut in_bin = false;
        for line in manifest.lines() {
            if line.starts_with('[') {
                in_bin = line.trim() == "[[bin]]";
            } else if in_bin {
                if let Some(name) = line.trim().strip_prefix("name = ") {
                    out.push(name.trim_matches('"').to_owned());
                }
            }
        }
    }
    out.sort();
    out
}

#[test]
fn every_template_function_names_a_workspace_binary() {
    let functions = template_functions();
    let binaries = workspace_binaries();
    assert_eq!(binaries, ["cleanup", "discovery", "grant", "revoke", "webhook"]);
    assert_eq!(functions.len(), binaries.len(), "one function per binary: {functions:?}");
    for (name, binary, cargo_lambda) in &functions {
        assert!(cargo_lambda, "{name}: BuildMethod rust-cargolambda");
        let binary = binary.as_deref().unwrap_or_else(|| panic!("{name}: no BuildProperties Binary"));
        assert!(binaries.iter().any(|b| b == binary), "{name}: binary {binary} is not in the workspace");
    }
    let mut used: Vec<_> = functions.iter().filter_map(|(_, b, _)| b.clone()).collect();
    used.sort();
    assert_eq!(used, binaries, "every binary is deployed, once");
}

#[test]
fn the_template_runs_rust_on_graviton_with_json_logs() {
    let text = std::fs::read_to_string(format!("{ROOT}/template.yaml")).unwrap();
    for needle in ["Runtime: provided.al2023", "Architectures: [arm64]", "LogFormat: JSON", "PointInTimeRecoveryEnabled: true", "SSEEnabled: true", "IndexName: status-due"] {
        assert!(text.contains(needle), "template.yaml lacks {needle}");
    }
    assert!(!text.contains("Action: \"*\"") && !text.contains("Action: '*'"), "no wildcard actions");
}
