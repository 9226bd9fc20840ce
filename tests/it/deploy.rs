//! deploy/k8s validates against the Kubernetes schemas (kubernetes-validate, from PyPI, pinned
//! in tests/support/requirements.txt): the base files one by one, and each overlay rendered by
//! tests/support/render_kustomize.py (a minimal kustomize: no kubectl on these machines).

use std::path::PathBuf;
use std::process::Command;

use crate::support::support_dir;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[track_caller]
fn validate(files: &[PathBuf]) {
    let output = Command::new(support_dir().join(".venv/bin/kubernetes-validate"))
        .args(["--strict", "--no-warn"])
        .args(files)
        .output()
        .expect("run kubernetes-validate (tests/support/setup.sh installs it)");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{text}");
    assert!(!text.contains("ERROR"), "{text}");
    assert!(text.contains("passed"), "nothing validated: {text}");
}

#[test]
fn the_kubernetes_base_manifests_validate() {
    let base = repo().join("deploy/k8s/base");
    let files: Vec<PathBuf> = ["configmap", "secret", "deployment", "service", "pdb"]
        .iter()
        .map(|name| base.join(format!("{name}.yaml")))
        .collect();
    validate(&files);
}

#[test]
fn every_kustomize_overlay_renders_and_validates() {
    let overlays = repo().join("deploy/k8s/overlays");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rendered = Vec::new();
    for entry in std::fs::read_dir(&overlays).expect("deploy/k8s/overlays") {
        let overlay = entry.expect("entry").path();
        let output = Command::new(support_dir().join(".venv/bin/python"))
            .arg(support_dir().join("render_kustomize.py"))
            .arg(&overlay)
            .output()
            .expect("run render_kustomize.py");
        assert!(
            output.status.success(),
            "{}: {}",
            overlay.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        let text = String::from_utf8_lossy(&output.stdout);
        for kind in [
            "ConfigMap",
            "Secret",
            "Deployment",
            "Service",
            "PodDisruptionBudget",
        ] {
            assert!(
                text.contains(&format!("kind: {kind}")),
                "{kind} missing in {}",
                overlay.display()
            );
        }
        assert!(
            text.contains("path: /readyz") && text.contains("path: /healthz"),
            "{text}"
        );
        let file = dir.path().join(format!(
            "{}.yaml",
            overlay.file_name().expect("name").to_string_lossy()
        ));
        std::fs::write(&file, text.as_bytes()).expect("write");
        rendered.push(file);
    }
    assert!(rendered.len() >= 2, "{rendered:?}");
    validate(&rendered);
}
