//! The driver name, socket paths, kubelet directory and image agree between the binary's
//! defaults, the chart and the plain manifests in deploy/ (helm itself is exercised by
//! scripts/check-deploy.sh).

use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn read(rel: &str) -> String {
    std::fs::read_to_string(format!("{ROOT}/{rel}")).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// `key: value` of a top-level (unindented) YAML line.
fn top_level(yaml: &str, key: &str) -> String {
    yaml.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}: ")))
        .unwrap_or_else(|| panic!("no top-level {key}"))
        .trim()
        .trim_matches('"')
        .to_string()
}

fn csi_help() -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_pail"))
        .args(["csi", "--help"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}

/// The `[default: …]` of `--flag` in clap's long help.
fn help_default(help: &str, flag: &str) -> String {
    let start = format!("--{flag} ");
    let mut lines = help
        .lines()
        .skip_while(|l| !l.trim_start().starts_with(&start));
    lines
        .next()
        .unwrap_or_else(|| panic!("no --{flag} in pail csi --help"));
    for line in lines {
        let t = line.trim();
        if t.starts_with("--") {
            break;
        }
        if let Some(v) = t.strip_prefix("[default: ") {
            return v.trim_end_matches(']').to_string();
        }
    }
    panic!("--{flag} has no default")
}

#[test]
fn driver_name_and_kubelet_dir_agree_everywhere() {
    let values = read("charts/pail/values.yaml");
    let deploy = read("deploy/kubernetes/pail.yaml");
    let help = csi_help();
    let name = top_level(&values, "driverName");
    let kubelet = top_level(&values, "kubeletDir");
    assert_eq!(name, pail::csi::DEFAULT_DRIVER_NAME);
    assert_eq!(help_default(&help, "driver-name"), name);
    assert_eq!(help_default(&help, "kubelet-dir"), kubelet);
    for want in [
        format!("kind: CSIDriver\nmetadata:\n  name: {name}"),
        format!("--driver-name={name}"),
        format!("--kubelet-dir={kubelet}"),
        format!("--kubelet-registration-path={kubelet}/plugins/{name}/csi.sock"),
        format!("path: {kubelet}/plugins/{name}"),
        format!("path: {kubelet}/plugins_registry"),
        format!("path: {kubelet}\n"),
    ] {
        assert!(
            deploy.contains(&want),
            "deploy/kubernetes/pail.yaml lacks {want:?}"
        );
    }
    for example in [
        "static-pv.yaml",
        "read-only-pv.yaml",
        "inline-ephemeral.yaml",
        "r2.yaml",
        "gcs.yaml",
    ] {
        assert!(
            read(&format!("deploy/examples/{example}")).contains(&format!("driver: {name}")),
            "{example}"
        );
    }
    assert!(read("deploy/examples/dynamic.yaml").contains(&format!("provisioner: {name}")));
}

#[test]
fn the_socket_the_plugin_serves_is_the_one_the_sidecars_dial() {
    let deploy = read("deploy/kubernetes/pail.yaml");
    let help = csi_help();
    let endpoint = help_default(&help, "endpoint");
    assert_eq!(endpoint, "unix:///csi/csi.sock");
    let path = endpoint.trim_start_matches("unix://");
    assert!(deploy.contains(&format!("--endpoint={endpoint}")));
    assert_eq!(
        deploy.matches(&format!("--csi-address={path}")).count(),
        3,
        "registrar, livenessprobe, provisioner"
    );
    assert!(deploy.contains("mountPath: /csi\n"));
}

#[test]
fn the_image_is_the_crate_version() {
    let chart = read("charts/pail/Chart.yaml");
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(top_level(&chart, "appVersion"), version);
    let values = read("charts/pail/values.yaml");
    let repo = values
        .lines()
        .skip_while(|l| !l.starts_with("image:"))
        .find_map(|l| l.trim().strip_prefix("repository: "))
        .unwrap();
    let deploy = read("deploy/kubernetes/pail.yaml");
    assert_eq!(
        deploy.matches(&format!("image: {repo}:{version}")).count(),
        2,
        "node plugin and controller"
    );
}
