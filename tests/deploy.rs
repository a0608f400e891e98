//! The deployment files, checked without a cluster or a Docker engine.
//!
//! `deploy/kubernetes/` is schema-validated offline by `scripts/validate-k8s.sh`, then checked
//! here against the code (flags, port), the SPEC (probe paths) and itself (mount paths against
//! the embedded config, label selectors against the labels they must pick, replicas against
//! `--total-shards`). The `Dockerfile` is checked for what a build would trip on: copied paths,
//! the binary name, the port, the user, `--locked` with a committed `Cargo.lock`. The generated
//! PrometheusRule and dashboard ConfigMap hold the shipped files, and `spec.replicas` reaches
//! `--total-shards` through the kustomization's `shards` component. `examples/`: the systemd
//! unit, the web-config and the scrape config.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_yaml::Value;

/// The binary, the image's entrypoint and the exporter's default port (SPEC "Names").
const BINARY: &str = "timattr_exporter";
const ENTRYPOINT: &str = "/usr/local/bin/timattr_exporter";
const PORT: u64 = 9877;

/// SPEC "Command line", plus `--shard.from-hostname` (the ordinal from the StatefulSet pod name).
const SPEC_FLAGS: &[&str] = &[
    "--config.file",
    "--config.check",
    "--web.listen-address",
    "--web.config.file",
    "--log.level",
    "--log.format",
    "--shard",
    "--total-shards",
    "--shard.from-hostname",
    "--config.auto-reload-interval",
    "--demo",
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn k8s_dir() -> PathBuf {
    repo().join("deploy/kubernetes")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Every YAML document of every manifest in `deploy/kubernetes`, with its file name.
fn manifests() -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(k8s_dir())
        .expect("deploy/kubernetes exists")
        .map(|entry| entry.expect("readable directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    let mut docs = Vec::new();
    for path in files {
        let name = path
            .file_name()
            .expect("a file")
            .to_string_lossy()
            .into_owned();
        let text = read(&path);
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = Value::deserialize(doc).unwrap_or_else(|e| panic!("{name}: {e}"));
            if !value.is_null() {
                docs.push((name.clone(), value));
            }
        }
    }
    docs
}

/// The one object of this kind and name.
fn object(kind: &str, name: &str) -> Value {
    let found: Vec<Value> = manifests()
        .into_iter()
        .map(|(_, v)| v)
        .filter(|v| {
            v["kind"].as_str() == Some(kind) && v["metadata"]["name"].as_str() == Some(name)
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "exactly one {kind}/{name} in deploy/kubernetes"
    );
    found.into_iter().next().expect("checked above")
}

fn statefulset() -> Value {
    object("StatefulSet", "timattr-exporter")
}

/// The exporter's container in the StatefulSet's pod template.
fn container(sts: &Value) -> &Value {
    let containers = sts["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .expect("containers is a list");
    assert_eq!(containers.len(), 1, "one container: the exporter");
    &containers[0]
}

fn args(sts: &Value) -> Vec<String> {
    container(sts)["args"]
        .as_sequence()
        .expect("the container has args")
        .iter()
        .map(|a| a.as_str().expect("every arg is a string").to_owned())
        .collect()
}

/// The value of `--flag=value` in the container's args.
fn flag_value(sts: &Value, flag: &str) -> String {
    let prefix = format!("{flag}=");
    let values: Vec<String> = args(sts)
        .iter()
        .filter_map(|a| a.strip_prefix(&prefix).map(str::to_owned))
        .collect();
    assert_eq!(
        values.len(),
        1,
        "{flag}=VALUE given once in {:?}",
        args(sts)
    );
    values.into_iter().next().expect("checked above")
}

fn str_at<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} is a string, got {v:?}"))
}

/// Whether a `matchLabels` selector picks an object with these labels.
fn selects(selector: &Value, labels: &Value) -> bool {
    assert!(
        selector["matchExpressions"].is_null(),
        "only matchLabels selectors are used (and checked)"
    );
    let wanted = selector["matchLabels"]
        .as_mapping()
        .expect("selector.matchLabels is a map");
    assert!(!wanted.is_empty(), "an empty selector picks everything");
    wanted.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn volume_mount<'a>(c: &'a Value, volume: &str) -> &'a Value {
    c["volumeMounts"]
        .as_sequence()
        .expect("volumeMounts is a list")
        .iter()
        .find(|m| m["name"].as_str() == Some(volume))
        .unwrap_or_else(|| panic!("volume {volume} is mounted"))
}

fn volume<'a>(sts: &'a Value, name: &str) -> &'a Value {
    sts["spec"]["template"]["spec"]["volumes"]
        .as_sequence()
        .expect("volumes is a list")
        .iter()
        .find(|v| v["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("volume {name} is declared"))
}

fn run_validator(args: &[&Path]) -> std::process::Output {
    Command::new("bash")
        .arg(repo().join("scripts/validate-k8s.sh"))
        .args(args)
        .output()
        .expect("bash runs")
}

fn describe(out: &std::process::Output) -> String {
    format!(
        "status {}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn manifests_pass_strict_offline_schema_validation() {
    // Installs kubernetes-validate from PyPI on first use: if that fails, this test fails.
    let out = run_validator(&[]);
    assert!(out.status.success(), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let docs = manifests().len();
    assert!(
        stdout.contains(&format!("{docs} passed, 0 failed")),
        "every one of the {docs} documents was validated:\n{stdout}"
    );
}

#[test]
fn validator_rejects_misspelt_fields_bad_values_and_unknown_kinds() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let sts = read(&k8s_dir().join("statefulset.yaml"));
    let typo = sts.replace("readOnlyRootFilesystem", "readOnlyRootFilesytem");
    assert_ne!(typo, sts);
    std::fs::write(dir.path().join("typo.yaml"), typo).expect("write");
    let sm = read(&k8s_dir().join("servicemonitor.yaml"));
    let bad_interval = sm.replace("interval: 30s", "interval: 30 seconds");
    assert_ne!(bad_interval, sm);
    std::fs::write(dir.path().join("interval.yaml"), bad_interval).expect("write");
    let rule = read(&k8s_dir().join("prometheusrule.yaml"));
    let bad_for = rule.replacen("for: 1m", "for: one minute", 1);
    assert_ne!(bad_for, rule);
    std::fs::write(dir.path().join("rule.yaml"), bad_for).expect("write");
    std::fs::write(
        dir.path().join("unknown.yaml"),
        "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n",
    )
    .expect("write");

    let out = run_validator(&[dir.path()]);
    assert!(!out.status.success(), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("0 passed, 4 failed"), "{}", describe(&out));
    assert!(stdout.contains("'one minute' does not match"), "{stdout}");
    assert!(
        stdout.contains("'readOnlyRootFilesytem' was unexpected"),
        "{stdout}"
    );
    assert!(stdout.contains("'30 seconds' does not match"), "{stdout}");
    assert!(
        stdout.contains("no schema for example.com/v1 Widget"),
        "{stdout}"
    );
}

#[test]
fn statefulset_args_name_real_flags_and_shard_by_pod_ordinal() {
    let sts = statefulset();
    let args = args(&sts);
    for arg in &args {
        let flag = arg.split('=').next().expect("split yields one item");
        assert!(SPEC_FLAGS.contains(&flag), "{arg} is not a SPEC flag");
    }
    for required in [
        "--config.file",
        "--web.listen-address",
        "--total-shards",
        "--shard.from-hostname",
    ] {
        assert!(
            args.iter()
                .any(|a| a == required || a.starts_with(&format!("{required}="))),
            "{required} in {args:?}"
        );
    }
    assert!(
        !args
            .iter()
            .any(|a| a == "--shard" || a.starts_with("--shard=")),
        "the ordinal comes from the hostname, not a fixed --shard"
    );
    assert!(
        container(&sts)["command"].is_null(),
        "no command: the image's ENTRYPOINT runs the binary"
    );

    // replicas and --total-shards must match; README's scaling patch replaces args[3].
    let total: u64 = flag_value(&sts, "--total-shards")
        .parse()
        .expect("--total-shards is a number");
    assert_eq!(sts["spec"]["replicas"].as_u64(), Some(total));
    assert!(
        args[3].starts_with("--total-shards="),
        "README patches args/3"
    );
    assert!(read(&k8s_dir().join("README.md")).contains("/args/3"));

    // The hostname is the pod name: set it from the downward API too.
    let env = container(&sts)["env"].as_sequence().expect("env is a list");
    assert!(env.iter().any(|e| e["name"].as_str() == Some("HOSTNAME")
        && e["valueFrom"]["fieldRef"]["fieldPath"].as_str() == Some("metadata.name")));
    assert_eq!(
        sts["spec"]["podManagementPolicy"].as_str(),
        Some("Parallel")
    );
}

/// The flags the StatefulSet passes are the ones the binary documents, and its default port
/// is the one the manifests and the Dockerfile use.
#[test]
fn binary_help_lists_every_flag_the_statefulset_uses() {
    let out = Command::new(env!("CARGO_BIN_EXE_timattr_exporter"))
        .arg("--help")
        .output()
        .expect("the binary runs");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", describe(&out));
    for arg in args(&statefulset()) {
        let flag = arg.split('=').next().expect("split yields one item");
        // Only where a flag is documented: a line that starts with it. "--shard" is not
        // "--shard.from-hostname": after the flag comes a space before its value, or the
        // line's end when clap puts the help below it.
        let documented = help.lines().any(|line| {
            line.trim_start()
                .strip_prefix(flag)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(' '))
        });
        assert!(documented, "`{BINARY} --help` has no {flag}:\n{help}");
    }
    assert!(
        help.contains(&format!("[default: :{PORT}]")),
        "the default listen address is :{PORT}:\n{help}"
    );
}

/// The StatefulSet's exact args, run by the real binary with `--config.check` in every pod's
/// place: each ordinal below `replicas` is a valid shard, and one more pod would be refused.
#[test]
fn statefulset_args_pass_config_check_in_every_pod() {
    let sts = statefulset();
    let tmp = tempfile::tempdir().expect("temporary directory");
    let config_path = tmp.path().join("timattr.yml");
    std::fs::write(&config_path, stand_in_config(&sts, tmp.path())).expect("write the config");
    let config_flag = format!("--config.file={}", config_path.display());
    let args: Vec<String> = args(&sts)
        .into_iter()
        .map(|a| {
            if a.starts_with("--config.file=") {
                config_flag.clone()
            } else {
                a
            }
        })
        .chain(["--config.check".to_owned()])
        .collect();
    let replicas = sts["spec"]["replicas"]
        .as_u64()
        .expect("replicas is a number");
    let check = |ordinal: u64| {
        Command::new(env!("CARGO_BIN_EXE_timattr_exporter"))
            .args(&args)
            .env("HOSTNAME", format!("timattr-exporter-{ordinal}"))
            .output()
            .expect("the binary runs")
    };
    for ordinal in 0..replicas {
        let out = check(ordinal);
        assert!(out.status.success(), "pod {ordinal}: {}", describe(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("is valid"),
            "{}",
            describe(&out)
        );
    }
    let out = check(replicas);
    assert_eq!(
        out.status.code(),
        Some(64),
        "a pod beyond --total-shards: {}",
        describe(&out)
    );
}

#[test]
fn probes_and_ports_match_the_exporter() {
    let sts = statefulset();
    let c = container(&sts);
    let ports = c["ports"].as_sequence().expect("ports is a list");
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0]["name"].as_str(), Some("metrics"));
    assert_eq!(ports[0]["containerPort"].as_u64(), Some(PORT));
    assert_eq!(flag_value(&sts, "--web.listen-address"), format!(":{PORT}"));

    for (probe, path) in [
        ("livenessProbe", "/-/healthy"),
        ("readinessProbe", "/-/ready"),
    ] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{probe}");
        assert_eq!(get["port"].as_str(), Some("metrics"), "{probe}");
    }

    let svc = object("Service", "timattr-exporter");
    let svc_ports = svc["spec"]["ports"].as_sequence().expect("ports is a list");
    assert_eq!(svc_ports.len(), 1);
    assert_eq!(svc_ports[0]["name"].as_str(), Some("metrics"));
    assert_eq!(svc_ports[0]["port"].as_u64(), Some(PORT));
    assert_eq!(svc_ports[0]["targetPort"].as_str(), Some("metrics"));

    let res = &c["resources"];
    assert_eq!(res["requests"]["cpu"].as_str(), Some("50m"));
    assert_eq!(res["requests"]["memory"].as_str(), Some("64Mi"));
    assert_eq!(res["limits"]["memory"].as_str(), Some("256Mi"));
}

#[test]
fn pods_run_as_non_root_on_a_read_only_root_filesystem() {
    let sts = statefulset();
    let pod = &sts["spec"]["template"]["spec"];
    let c = container(&sts);
    for ctx in [&pod["securityContext"], &c["securityContext"]] {
        assert_eq!(ctx["runAsNonRoot"].as_bool(), Some(true));
        assert_eq!(ctx["runAsUser"].as_u64(), Some(65532));
        assert_eq!(
            ctx["seccompProfile"]["type"].as_str(),
            Some("RuntimeDefault")
        );
    }
    let ctx = &c["securityContext"];
    assert_eq!(ctx["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(ctx["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(
        ctx["capabilities"]["drop"].as_sequence().map(Vec::as_slice),
        Some(&[Value::from("ALL")][..])
    );
    assert!(ctx["capabilities"]["add"].is_null());
    assert_eq!(pod["automountServiceAccountToken"].as_bool(), Some(false));

    // The image's user is the one the pod runs as.
    let user = dockerfile_instruction("USER");
    assert_eq!(
        user.split(':').next(),
        Some("65532"),
        "Dockerfile USER {user}"
    );
}

#[test]
fn mounts_match_the_embedded_config() {
    let sts = statefulset();
    let c = container(&sts);
    let pod = &sts["spec"]["template"]["spec"];

    // --config.file is the ConfigMap's key under its mount.
    let config_file = flag_value(&sts, "--config.file");
    let config_mount = volume_mount(c, "config");
    let (dir, key) = config_file.rsplit_once('/').expect("an absolute path");
    assert_eq!(config_mount["mountPath"].as_str(), Some(dir));
    assert!(
        config_mount["subPath"].is_null(),
        "no subPath: edits must reach the pod"
    );
    let cm_name = str_at(
        &volume(&sts, "config")["configMap"]["name"],
        "configMap.name",
    );
    let cm = object("ConfigMap", cm_name);
    let config_text = str_at(&cm["data"][key], "the config in the ConfigMap");
    let config: Value = serde_yaml::from_str(config_text).expect("the embedded config is YAML");

    // secret_key_file is the Secret's key under its read-only, owner-only mount.
    let apps = config["apps"].as_sequence().expect("apps is a list");
    assert_eq!(apps.len(), 1);
    let app = &apps[0];
    assert_eq!(app["region"].as_str(), Some("singapore"));
    for group in app["groups"].as_sequence().expect("groups is a list") {
        let id = group.as_str().or(group["id"].as_str()).expect("a group ID");
        assert!(id.starts_with("@TGS#"), "{id}");
    }
    let secret_file = str_at(&app["secret_key_file"], "secret_key_file");
    let (dir, key) = secret_file.rsplit_once('/').expect("an absolute path");
    let secret_mount = volume_mount(c, "tim-secret");
    assert_eq!(secret_mount["mountPath"].as_str(), Some(dir));
    assert_eq!(secret_mount["readOnly"].as_bool(), Some(true));
    let secret_volume = &volume(&sts, "tim-secret")["secret"];
    assert_eq!(secret_volume["defaultMode"].as_u64(), Some(0o400));
    // Without fsGroup, a 0400 root-owned key file is unreadable by user 65532.
    assert_eq!(pod["securityContext"]["fsGroup"].as_u64(), Some(65532));
    let secret = object(
        "Secret",
        str_at(&secret_volume["secretName"], "secret.secretName"),
    );
    assert_eq!(secret["type"].as_str(), Some("Opaque"));
    let value = str_at(&secret["stringData"][key], "the Secret's key");
    assert!(
        value.starts_with("REPLACE"),
        "a placeholder, never a real key"
    );

    // state_file lives on the per-shard volume, the only writable mount.
    let state_file = str_at(&config["state_file"], "state_file");
    let (dir, _) = state_file.rsplit_once('/').expect("an absolute path");
    let state_mount = volume_mount(c, "state");
    assert_eq!(state_mount["mountPath"].as_str(), Some(dir));
    let claims = sts["spec"]["volumeClaimTemplates"]
        .as_sequence()
        .expect("volumeClaimTemplates is a list");
    assert!(
        claims
            .iter()
            .any(|t| t["metadata"]["name"].as_str() == Some("state"))
    );
    for m in c["volumeMounts"]
        .as_sequence()
        .expect("volumeMounts is a list")
    {
        if m["name"].as_str() != Some("state") {
            assert_eq!(m["readOnly"].as_bool(), Some(true), "{m:?}");
        }
    }

    // The image's default CMD reads the same path.
    assert!(
        dockerfile_instruction("CMD").contains(&format!("--config.file={config_file}")),
        "Dockerfile CMD uses {config_file}"
    );
}

/// The config in the ConfigMap, with its `secret_key_file` pointed at an owner-only stand-in
/// key written into `dir` (the Secret's mount does not exist here).
fn stand_in_config(sts: &Value, dir: &Path) -> String {
    let config_file = flag_value(sts, "--config.file");
    let (_, key) = config_file.rsplit_once('/').expect("an absolute path");
    let cm_name = str_at(
        &volume(sts, "config")["configMap"]["name"],
        "configMap.name",
    );
    let cm = object("ConfigMap", cm_name);
    let text = str_at(&cm["data"][key], "the config in the ConfigMap");

    let key_file = dir.join("secret_key");
    std::fs::write(&key_file, "placeholder\n").expect("write the stand-in key");
    // Owner-only, as the exporter wants a key file. (In the pod, fsGroup makes the mounted key
    // 0440 root:65532, which the exporter reports as a warning: see deploy/kubernetes/README.md.)
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600))
        .expect("chmod the stand-in key");
    let mounted_key = "/run/secrets/tim/secret_key";
    assert!(text.contains(mounted_key));
    text.replace(mounted_key, key_file.to_str().expect("a UTF-8 temp path"))
}

/// The example config is one the exporter accepts, parsed by the real config module.
#[test]
fn embedded_config_is_accepted_by_the_exporter() {
    let sts = statefulset();
    let tmp = tempfile::tempdir().expect("temporary directory");
    let yaml = stand_in_config(&sts, tmp.path());
    let loaded = timattr_exporter::config::parse(&yaml, &|_| None, tmp.path())
        .unwrap_or_else(|e| panic!("the ConfigMap's config is rejected:\n{e}"));
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    assert_eq!(
        loaded.config.state_file.as_deref(),
        Some(Path::new("/var/lib/timattr_exporter/state.json"))
    );
    for app in &loaded.config.apps {
        assert!(app.rate_limit <= 200.0, "within the API's documented 200/s");
        assert!(!app.groups.is_empty());
    }
}

#[test]
fn selectors_pick_exactly_the_intended_objects() {
    let sts = statefulset();
    let pod_labels = &sts["spec"]["template"]["metadata"]["labels"];
    assert!(selects(&sts["spec"]["selector"], pod_labels));

    let headless = object("Service", "timattr-exporter-headless");
    assert_eq!(
        sts["spec"]["serviceName"].as_str(),
        Some("timattr-exporter-headless")
    );
    assert_eq!(headless["spec"]["clusterIP"].as_str(), Some("None"));
    let metrics = object("Service", "timattr-exporter");
    for svc in [&headless, &metrics] {
        let wanted = svc["spec"]["selector"]
            .as_mapping()
            .expect("a selector map");
        assert!(wanted.iter().all(|(k, v)| pod_labels.get(k) == Some(v)));
    }

    // The ServiceMonitor picks the metrics Service and not the headless one: a pod scraped
    // through both would have every series twice.
    let sm = object("ServiceMonitor", "timattr-exporter");
    assert!(selects(
        &sm["spec"]["selector"],
        &metrics["metadata"]["labels"]
    ));
    assert!(!selects(
        &sm["spec"]["selector"],
        &headless["metadata"]["labels"]
    ));
    let endpoints = sm["spec"]["endpoints"].as_sequence().expect("a list");
    assert_eq!(endpoints.len(), 1);
    assert_eq!(endpoints[0]["port"].as_str(), Some("metrics"));
    assert_eq!(endpoints[0]["path"].as_str(), Some("/metrics"));

    let pm = object("PodMonitor", "timattr-exporter");
    assert!(selects(&pm["spec"]["selector"], pod_labels));
    let endpoints = pm["spec"]["podMetricsEndpoints"]
        .as_sequence()
        .expect("a list");
    assert_eq!(endpoints[0]["port"].as_str(), Some("metrics"));

    let pdb = object("PodDisruptionBudget", "timattr-exporter");
    assert!(selects(&pdb["spec"]["selector"], pod_labels));

    for (file, doc) in manifests() {
        if doc["kind"].as_str() == Some("Kustomization") {
            continue;
        }
        assert_eq!(
            doc["metadata"]["labels"]["app.kubernetes.io/name"].as_str(),
            Some("timattr-exporter"),
            "{file}: app.kubernetes.io/name"
        );
    }
}

#[test]
fn kustomization_lists_every_manifest_and_one_scrape_config() {
    let kust: Value = serde_yaml::from_str(&read(&k8s_dir().join("kustomization.yaml")))
        .expect("kustomization.yaml is YAML");
    let resources: Vec<&str> = kust["resources"]
        .as_sequence()
        .expect("resources is a list")
        .iter()
        .map(|r| str_at(r, "a resource"))
        .collect();
    for r in &resources {
        assert!(k8s_dir().join(r).is_file(), "{r} exists");
    }
    let mut unlisted: Vec<String> = manifests()
        .into_iter()
        .map(|(file, _)| file)
        .filter(|f| f != "kustomization.yaml" && !resources.contains(&f.as_str()))
        .collect();
    unlisted.dedup();
    assert_eq!(
        unlisted,
        ["podmonitor.yaml"],
        "only the alternative is left out"
    );
    assert!(resources.contains(&"servicemonitor.yaml"));
    for generated in ["prometheusrule.yaml", "dashboard-configmap.yaml"] {
        assert!(resources.contains(&generated), "{generated} is applied");
    }
    let components: Vec<&str> = kust["components"]
        .as_sequence()
        .expect("components is a list")
        .iter()
        .map(|c| str_at(c, "a component"))
        .collect();
    assert_eq!(components, ["shards"]);

    let sts = statefulset();
    let image = str_at(&container(&sts)["image"], "image");
    let name = image.rsplit_once(':').map_or(image, |(n, _)| n);
    let images = kust["images"].as_sequence().expect("images is a list");
    assert!(images.iter().any(|i| i["name"].as_str() == Some(name)));
}

/// ConfigMap and Secret changes apply without a shell in the image: the exporter re-reads them.
#[test]
fn statefulset_reloads_its_config_and_secret_by_itself() {
    let sts = statefulset();
    assert_eq!(flag_value(&sts, "--config.auto-reload-interval"), "30s");
}

/// The kustomize component that makes `spec.replicas` the one place the shard count is set.
fn shards_replacement() -> Value {
    let component: Value =
        serde_yaml::from_str(&read(&k8s_dir().join("shards/kustomization.yaml")))
            .expect("shards/kustomization.yaml is YAML");
    assert_eq!(component["kind"].as_str(), Some("Component"));
    let replacements = component["replacements"]
        .as_sequence()
        .expect("replacements");
    assert_eq!(replacements.len(), 1);
    replacements[0].clone()
}

/// What kustomize does with the `shards` replacement, applied here by hand: the source field's
/// value becomes the part after `=` of the target argument.
fn apply_shards_replacement(sts: &mut Value) {
    let r = shards_replacement();
    assert_eq!(r["source"]["kind"].as_str(), Some("StatefulSet"));
    assert_eq!(r["source"]["name"].as_str(), Some("timattr-exporter"));
    assert_eq!(r["source"]["fieldPath"].as_str(), Some("spec.replicas"));
    let target = &r["targets"][0];
    assert_eq!(target["select"]["kind"].as_str(), Some("StatefulSet"));
    assert_eq!(target["select"]["name"].as_str(), Some("timattr-exporter"));
    let name = str_at(&container(sts)["name"], "container name").to_owned();
    assert_eq!(
        target["fieldPaths"].as_sequence().map(Vec::len),
        Some(1),
        "one target field"
    );
    assert_eq!(
        target["fieldPaths"][0].as_str(),
        Some(format!("spec.template.spec.containers.[name={name}].args.3").as_str())
    );
    assert_eq!(target["options"]["delimiter"].as_str(), Some("="));
    assert_eq!(target["options"]["index"].as_u64(), Some(1));
    let replicas = sts["spec"]["replicas"].as_u64().expect("replicas");
    let arg = &mut sts["spec"]["template"]["spec"]["containers"][0]["args"][3];
    let flag = arg
        .as_str()
        .and_then(|a| a.split_once('='))
        .map(|(f, _)| f.to_owned())
        .expect("args[3] is --flag=value");
    *arg = Value::from(format!("{flag}={replicas}"));
}

/// A kustomize on this machine: `kustomize build` or `kubectl kustomize`.
fn kustomize() -> Option<Vec<String>> {
    let works = |cmd: &[&str]| {
        Command::new(cmd[0])
            .args(&cmd[1..])
            .arg("--help")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if works(&["kustomize", "build"]) {
        Some(vec!["kustomize".into(), "build".into()])
    } else if works(&["kubectl", "kustomize"]) {
        Some(vec!["kubectl".into(), "kustomize".into()])
    } else {
        None
    }
}

fn kustomize_build(tool: &[String], dir: &Path) -> String {
    let out = Command::new(&tool[0])
        .args(&tool[1..])
        .arg(dir)
        .output()
        .expect("kustomize runs");
    assert!(out.status.success(), "{}", describe(&out));
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

fn docs_of(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).expect("YAML document"))
        .filter(|v| !v.is_null())
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let path = entry.expect("entry").path();
        let dest = to.join(path.file_name().expect("a name"));
        if path.is_dir() {
            copy_dir(&path, &dest);
        } else {
            std::fs::copy(&path, &dest).expect("copy");
        }
    }
}

/// `spec.replicas` is the one place the number of shards is set: the `shards` component copies
/// it into `--total-shards`, in the base and in an overlay that scales it as the README says.
/// The rendered base passes the strict schema validation. Without a kustomize (`kustomize` or
/// `kubectl kustomize`; Debian's is too old for components and replacements) the replacement is
/// applied here by hand and only that is checked: the test says so on stderr.
#[test]
fn replicas_set_total_shards_through_kustomize() {
    let mut sts = statefulset();
    let mut bumped = sts.clone();
    bumped["spec"]["replicas"] = Value::from(7);
    apply_shards_replacement(&mut bumped);
    assert_eq!(flag_value(&bumped, "--total-shards"), "7");
    apply_shards_replacement(&mut sts);
    assert_eq!(sts, statefulset(), "the shipped args already agree");

    let Some(tool) = kustomize() else {
        eprintln!(
            "NOTE: no `kustomize` or `kubectl kustomize` on PATH: the shards replacement was \
             checked statically only"
        );
        return;
    };
    let dir = tempfile::tempdir().expect("temporary directory");
    let base = dir.path().join("base");
    copy_dir(&k8s_dir(), &base);
    let built = kustomize_build(&tool, &base);
    let rendered = dir.path().join("rendered.yaml");
    std::fs::write(&rendered, &built).expect("write");
    let out = run_validator(&[&rendered]);
    assert!(out.status.success(), "{}", describe(&out));
    let docs = docs_of(&built);
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    for kind in ["StatefulSet", "PrometheusRule", "ServiceMonitor"] {
        assert!(kinds.contains(&kind), "{kind} in {kinds:?}");
    }
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("{} passed, 0 failed", docs.len()))
    );
    assert!(docs.iter().any(|d| d["kind"] == "ConfigMap"
        && d["metadata"]["labels"]["grafana_dashboard"].as_str() == Some("1")));

    // An overlay scaling to 5 as deploy/kubernetes/README.md shows.
    let overlay = dir.path().join("overlay");
    std::fs::create_dir_all(overlay.join("scale")).expect("mkdir");
    std::fs::write(
        overlay.join("kustomization.yaml"),
        "resources: [../base]\ncomponents: [scale, ../base/shards]\n",
    )
    .expect("write");
    std::fs::write(
        overlay.join("scale/kustomization.yaml"),
        "apiVersion: kustomize.config.k8s.io/v1alpha1\nkind: Component\n\
         replicas:\n  - {name: timattr-exporter, count: 5}\n",
    )
    .expect("write");
    let scaled = docs_of(&kustomize_build(&tool, &overlay));
    let sts = scaled
        .iter()
        .find(|d| d["kind"] == "StatefulSet")
        .expect("the StatefulSet");
    assert_eq!(sts["spec"]["replicas"].as_u64(), Some(5));
    assert_eq!(flag_value(sts, "--total-shards"), "5");
}

/// The generated PrometheusRule holds exactly the groups of alerts.yml and rules.yml, and the
/// dashboard ConfigMap exactly dashboards/timattr.json (its runbook links on the default base).
/// (tests/observability.rs checks the files byte for byte against a fresh render.)
#[test]
fn generated_prometheusrule_and_dashboard_hold_the_shipped_files() {
    let groups = |rel: &str| -> Vec<Value> {
        let doc: Value = serde_yaml::from_str(&read(&repo().join(rel))).expect("YAML");
        doc["groups"].as_sequence().expect("groups").clone()
    };
    let mut want = groups("config/prometheus/alerts.yml");
    want.extend(groups("config/prometheus/rules.yml"));
    let rule = object("PrometheusRule", "timattr-exporter");
    assert_eq!(
        rule["spec"]["groups"].as_sequence().expect("spec.groups"),
        &want
    );

    let cm = object("ConfigMap", "timattr-exporter-dashboard");
    assert_eq!(
        cm["metadata"]["labels"]["grafana_dashboard"].as_str(),
        Some("1")
    );
    let embedded: serde_json::Value =
        serde_json::from_str(str_at(&cm["data"]["timattr.json"], "the dashboard"))
            .expect("the embedded dashboard is JSON");
    let shipped: serde_json::Value =
        serde_json::from_str(&read(&repo().join("dashboards/timattr.json")))
            .expect("dashboard JSON");
    assert!(
        embedded == shipped,
        "the ConfigMap's dashboard differs from dashboards/timattr.json: run scripts/render-rules.py"
    );
}

/// Dockerfile instructions, continuation lines joined, comments dropped.
fn dockerfile() -> Vec<(String, String)> {
    let text = read(&repo().join("Dockerfile"));
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (current.is_empty() && trimmed.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                let (op, rest) = current.split_once(' ').unwrap_or((&current, ""));
                out.push((op.to_uppercase(), rest.trim().to_owned()));
                current.clear();
            }
        }
    }
    out
}

/// The last instruction of a kind: the one that counts in the final image.
fn dockerfile_instruction(op: &str) -> String {
    dockerfile()
        .into_iter()
        .filter(|(o, _)| o == op)
        .map(|(_, rest)| rest)
        .next_back()
        .unwrap_or_else(|| panic!("Dockerfile has {op}"))
}

/// The package name from Cargo.toml's `[package]` table.
fn package_name() -> String {
    let manifest = read(&repo().join("Cargo.toml"));
    let mut in_package = false;
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_package = line == "[package]";
        } else if in_package {
            if let Some(value) = line.strip_prefix("name") {
                let value = value.trim_start().trim_start_matches('=').trim();
                return value.trim_matches('"').to_owned();
            }
        }
    }
    panic!("Cargo.toml has [package] name");
}

#[test]
fn dockerfile_builds_the_real_binary_locked_and_runs_it_as_non_root() {
    let instructions = dockerfile();
    assert!(instructions.iter().any(|(op, _)| op == "FROM"));

    // Every COPY from the build context names a path that exists.
    for (op, rest) in &instructions {
        if op != "COPY" && op != "ADD" {
            continue;
        }
        let words: Vec<&str> = rest.split_whitespace().collect();
        if words.iter().any(|w| w.starts_with("--from=")) {
            continue;
        }
        let paths: Vec<&str> = words.into_iter().filter(|w| !w.starts_with("--")).collect();
        assert!(paths.len() >= 2, "{op} {rest}: source and destination");
        for src in &paths[..paths.len() - 1] {
            assert!(repo().join(src).exists(), "{op} source {src} exists");
        }
    }

    // The binary is the package's, built --release --locked from a committed Cargo.lock.
    assert_eq!(package_name(), BINARY);
    assert!(repo().join("src/main.rs").is_file());
    let build = instructions
        .iter()
        .find(|(op, rest)| op == "RUN" && rest.contains("cargo build"))
        .map(|(_, rest)| rest.clone())
        .expect("a RUN cargo build");
    for part in ["--release", "--locked", &format!("--bin {BINARY}")] {
        assert!(build.contains(part), "cargo build has {part}: {build}");
    }
    assert!(build.contains(&format!("target/release/{BINARY}")));
    let tracked = Command::new("git")
        .args(["ls-files", "--error-unmatch", "Cargo.lock"])
        .current_dir(repo())
        .output()
        .expect("git runs");
    assert!(tracked.status.success(), "Cargo.lock is committed");

    // .git is not in the context: build.rs's revision comes from a build argument.
    let build_rs = repo().join("build.rs");
    if build_rs.exists() && read(&build_rs).contains("TIMATTR_REVISION") {
        assert!(
            instructions
                .iter()
                .any(|(op, rest)| op == "ARG" && rest.starts_with("TIMATTR_REVISION")),
            "Dockerfile passes ARG TIMATTR_REVISION to build.rs"
        );
    }

    // The runtime image: the binary at the entrypoint, the port, a non-root numeric user.
    assert!(instructions.iter().any(|(op, rest)| op == "COPY"
        && rest.starts_with("--from=build")
        && rest.ends_with(&format!(" {ENTRYPOINT}"))));
    assert_eq!(
        dockerfile_instruction("ENTRYPOINT"),
        format!("[\"{ENTRYPOINT}\"]")
    );
    assert_eq!(dockerfile_instruction("EXPOSE"), PORT.to_string());
    let user = dockerfile_instruction("USER");
    let uid: u32 = user
        .split(':')
        .next()
        .and_then(|u| u.parse().ok())
        .unwrap_or_else(|| panic!("USER {user} is numeric, so runAsNonRoot can verify it"));
    assert_ne!(uid, 0, "USER is not root");
    let runtime = instructions
        .iter()
        .filter(|(op, _)| op == "FROM")
        .map(|(_, rest)| rest.as_str())
        .next_back()
        .expect("a FROM");
    assert!(
        runtime.contains("distroless/cc") || runtime.contains("ca-certificates"),
        "the runtime image has a CA store: {runtime}"
    );
}

#[test]
fn dockerignore_keeps_everything_the_build_needs() {
    let ignore = read(&repo().join(".dockerignore"));
    let entries: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert!(entries.contains(&"target") && entries.contains(&".git"));
    for entry in &entries {
        assert!(
            !entry.contains(['*', '?', '!', '/', '[']),
            "{entry}: only plain top-level names, which this test can reason about"
        );
        for needed in [
            "Cargo.toml",
            "Cargo.lock",
            "src",
            "build.rs",
            "benches",
            "tests",
        ] {
            assert_ne!(entry, &needed, ".dockerignore excludes {needed}");
        }
    }
    // Files compiled into the binary must be in the context.
    let mut stack = vec![repo().join("src")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("readable source directory") {
            let path = entry.expect("readable entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                for line in read(&path).lines() {
                    if !line.contains("include_str!") && !line.contains("include_bytes!") {
                        continue;
                    }
                    for entry in &entries {
                        for needle in [format!("\"{entry}/"), format!("/{entry}/")] {
                            assert!(
                                !line.contains(&needle),
                                "{}: includes a file under ignored {entry}: {line}",
                                path.display()
                            );
                        }
                    }
                }
            }
        }
    }
}

/// The job the shipped alerts select: the one selector, in the `timattr:up` recording rule of
/// `config/prometheus/alerts.yml`, must be `up{job="<name>"}`.
fn alerted_job() -> String {
    let alerts: Value =
        serde_yaml::from_str(&read(&repo().join("config/prometheus/alerts.yml"))).expect("YAML");
    let rules: Vec<&Value> = alerts["groups"]
        .as_sequence()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_sequence().expect("rules").iter())
        .collect();
    let record: Vec<&str> = rules
        .iter()
        .filter(|r| r["record"].as_str() == Some("timattr:up"))
        .filter_map(|r| r["expr"].as_str())
        .collect();
    assert_eq!(record.len(), 1, "one timattr:up recording rule");
    let job = record[0]
        .trim()
        .strip_prefix("up{job=\"")
        .and_then(|rest| rest.strip_suffix("\"}"))
        .unwrap_or_else(|| panic!("timattr:up is up{{job=\"…\"}}, not {}", record[0]));
    // The one place: no alert selects `up` or a job by itself.
    for rule in rules.iter().filter(|r| r["alert"].is_string()) {
        let expr = rule["expr"].as_str().expect("expr");
        assert!(
            !expr.contains("up{") && !expr.contains("job=") && !expr.contains("job!"),
            "{}: selects targets itself instead of through timattr:up: {expr}",
            rule["alert"].as_str().unwrap_or("?")
        );
    }
    job.to_owned()
}

/// Every shipped way of scraping the exporter gives its series the job the alerts select: the
/// Prometheus Operator names a ServiceMonitor's job after the Service and a PodMonitor's
/// `<namespace>/<name>` unless a relabeling sets it, and a second job in prometheus.yml would
/// not be selected.
#[test]
fn every_way_of_scraping_sets_the_job_the_alerts_select() {
    let job = alerted_job();
    assert_eq!(job, "timattr");

    let prom: Value = serde_yaml::from_str(&read(&repo().join("config/prometheus/prometheus.yml")))
        .expect("YAML");
    let scrape_configs = prom["scrape_configs"]
        .as_sequence()
        .expect("scrape_configs");
    assert!(!scrape_configs.is_empty());
    for sc in scrape_configs {
        assert_eq!(
            sc["job_name"].as_str(),
            Some(job.as_str()),
            "prometheus.yml (also docker-compose.yml's) scrapes under another job"
        );
    }
    let compose = read(&repo().join("docker-compose.yml"));
    assert!(
        compose.contains("./config/prometheus:/etc/prometheus"),
        "docker-compose.yml's Prometheus uses the shipped prometheus.yml"
    );

    for (kind, endpoints) in [
        ("ServiceMonitor", "endpoints"),
        ("PodMonitor", "podMetricsEndpoints"),
    ] {
        let monitor = object(kind, "timattr-exporter");
        let endpoints = monitor["spec"][endpoints]
            .as_sequence()
            .unwrap_or_else(|| panic!("{kind} has endpoints"));
        assert!(!endpoints.is_empty());
        for endpoint in endpoints {
            let last_job_relabeling = endpoint["relabelings"]
                .as_sequence()
                .into_iter()
                .flatten()
                .rfind(|r| r["targetLabel"].as_str() == Some("job"))
                .unwrap_or_else(|| panic!("{kind}: no relabeling sets job"));
            assert!(
                last_job_relabeling["sourceLabels"].is_null()
                    && matches!(
                        last_job_relabeling["action"].as_str(),
                        None | Some("replace")
                    ),
                "{kind}: job is set to a constant"
            );
            assert_eq!(
                last_job_relabeling["replacement"].as_str(),
                Some(job.as_str()),
                "{kind}: job"
            );
        }
    }
}

// ---------------------------------------------------------------- examples/ (systemd, TLS)

/// `key=value` settings of one `[section]` of a systemd unit, continuation lines joined.
fn unit_section(text: &str, section: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut pending = String::new();
    for line in text.lines() {
        let line = line.trim();
        if pending.is_empty() && (line.starts_with('#') || line.starts_with(';') || line.is_empty())
        {
            continue;
        }
        if pending.is_empty() && line.starts_with('[') {
            current = line.trim_matches(|c| c == '[' || c == ']').to_owned();
            continue;
        }
        let (joined, more) = match line.strip_suffix('\\') {
            Some(head) => (format!("{pending}{} ", head.trim_end()), true),
            None => (format!("{pending}{line}"), false),
        };
        if more {
            pending = joined;
            continue;
        }
        pending.clear();
        if current == section {
            let (k, v) = joined.split_once('=').expect("key=value");
            out.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    out
}

fn unit_values(settings: &[(String, String)], key: &str) -> Vec<String> {
    settings
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .collect()
}

/// The systemd unit is hardened (a dynamic user, a read-only system but for its state
/// directory, secrets as credentials) and its paths agree with each other and the exporter's
/// flags; `systemd-analyze verify` (when present) finds nothing to say about it.
#[test]
fn systemd_unit_is_hardened_and_consistent() {
    let path = repo().join("examples/timattr_exporter.service");
    let text = read(&path);
    let service = unit_section(&text, "Service");
    let one = |key: &str| -> String {
        let v = unit_values(&service, key);
        assert_eq!(v.len(), 1, "one {key}= in [Service]: {v:?}");
        v[0].clone()
    };
    assert!(
        one("DynamicUser") == "yes" || !unit_values(&service, "User").is_empty(),
        "a dynamic or dedicated user"
    );
    for (key, want) in [
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", ""),
        ("StateDirectory", "timattr_exporter"),
        ("Restart", "on-failure"),
    ] {
        assert_eq!(one(key), want, "{key}");
    }
    // The config's state_file lives in the state directory.
    assert!(text.contains("state_file: /var/lib/timattr_exporter/state.json"));
    // The secret key comes in as a credential, at the path the config names.
    let creds: Vec<(String, String)> = unit_values(&service, "LoadCredential")
        .iter()
        .map(|c| {
            let (name, src) = c.split_once(':').expect("name:path");
            (name.to_owned(), src.to_owned())
        })
        .collect();
    let unit_name = path.file_name().expect("a name").to_string_lossy();
    let secret = creds
        .iter()
        .find(|(name, _)| name.contains("secret_key"))
        .expect("LoadCredential= for the secret key");
    assert!(text.contains(&format!(
        "secret_key_file: /run/credentials/{unit_name}/{}",
        secret.0
    )));
    // ExecStart runs the binary with SPEC flags only; the web config is a credential too.
    let exec = one("ExecStart");
    let mut words = exec.split_whitespace();
    assert_eq!(words.next(), Some(ENTRYPOINT));
    let flags: Vec<&str> = words.collect();
    for flag in &flags {
        let name = flag.split('=').next().expect("a flag");
        assert!(SPEC_FLAGS.contains(&name), "{flag} is not a SPEC flag");
    }
    let web = flags
        .iter()
        .find_map(|f| f.strip_prefix("--web.config.file=%d/"))
        .expect("--web.config.file from the credentials directory");
    assert!(creds.iter().any(|(name, _)| name == web), "{web} is loaded");
    // Whatever the web config names relative to itself is loaded beside it.
    let web_config: Value =
        serde_yaml::from_str(&read(&repo().join("examples/web-config.yml"))).expect("YAML");
    for key in ["cert_file", "key_file"] {
        let file = str_at(&web_config["tls_server_config"][key], key);
        assert!(
            creds.iter().any(|(name, _)| name == file),
            "{file} is loaded"
        );
    }

    // systemd's own check, with the binary this build made at the ExecStart path.
    match Command::new("systemd-analyze").arg("--version").output() {
        Ok(o) if o.status.success() => {
            let dir = tempfile::tempdir().expect("temporary directory");
            let copy = dir.path().join(&*unit_name);
            std::fs::write(
                &copy,
                text.replace(ENTRYPOINT, env!("CARGO_BIN_EXE_timattr_exporter")),
            )
            .expect("write");
            let out = Command::new("systemd-analyze")
                .arg("verify")
                .arg(&copy)
                .output()
                .expect("systemd-analyze runs");
            let said = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            // It reports unknown keys and bad values as warnings, still exiting 0.
            let about_unit: Vec<&str> = said.lines().filter(|l| l.contains(&*unit_name)).collect();
            assert!(
                out.status.success() && about_unit.is_empty(),
                "systemd-analyze verify:\n{said}"
            );
        }
        _ => eprintln!("NOTE: no systemd-analyze: the unit was checked statically only"),
    }
}

fn write_tls_pair(dir: &Path) {
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("certificate");
    std::fs::write(dir.join("tls.crt"), cert.pem()).expect("write");
    std::fs::write(dir.join("tls.key"), key.serialize_pem()).expect("write");
}

/// The web-config example loads (TLS and basic auth) with the library's web_config module and
/// through `--config.check`, and its hash is of the password it documents; a broken copy fails.
#[test]
fn web_config_example_loads() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let text = read(&repo().join("examples/web-config.yml"));
    assert!(text.contains(r#"htpasswd -nBC 10 "" | tr -d ':\n'"#));
    let web = dir.path().join("web.yml");
    std::fs::write(&web, &text).expect("write");
    write_tls_pair(dir.path());

    let loaded = timattr_exporter::web_config::load(&web)
        .unwrap_or_else(|e| panic!("examples/web-config.yml: {e}"));
    assert!(loaded.tls().is_some(), "TLS is on");
    assert!(loaded.requires_basic_auth(), "basic auth is on");
    let doc: Value = serde_yaml::from_str(&text).expect("YAML");
    let hash = str_at(&doc["basic_auth_users"]["prometheus"], "the hash");
    assert!(
        hash.starts_with("$2") && hash.contains("$10$"),
        "bcrypt, cost 10"
    );
    assert!(bcrypt::verify("change-me", hash).expect("a bcrypt hash"));

    // The binary checks it with the config.
    let key = dir.path().join("secret_key");
    std::fs::write(&key, "placeholder\n").expect("write");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let config = dir.path().join("timattr.yml");
    std::fs::write(
        &config,
        format!(
            "apps:\n  - sdkappid: 1400000000\n    region: singapore\n    identifier: administrator\n    \
             secret_key_file: {}\n    groups: [\"@TGS#a\"]\n",
            key.display()
        ),
    )
    .expect("write");
    let check = |web: &Path| {
        Command::new(env!("CARGO_BIN_EXE_timattr_exporter"))
            .arg("--config.check")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--web.config.file={}", web.display()))
            .output()
            .expect("the binary runs")
    };
    let out = check(&web);
    assert!(out.status.success(), "{}", describe(&out));

    let broken = dir.path().join("broken.yml");
    std::fs::write(
        &broken,
        text.replace("key_file: tls.key", "key_file: missing.key"),
    )
    .expect("write");
    let out = check(&broken);
    assert_eq!(out.status.code(), Some(64), "{}", describe(&out));
}

/// The scrape example is a valid Prometheus config under the job the alerts select, speaking
/// TLS and basic auth as the web-config example wants.
#[test]
fn scrape_config_example_is_valid_and_uses_the_alerted_job() {
    let path = repo().join("examples/prometheus-scrape.yml");
    let doc: Value = serde_yaml::from_str(&read(&path)).expect("YAML");
    let jobs = doc["scrape_configs"].as_sequence().expect("scrape_configs");
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0]["job_name"].as_str(), Some(alerted_job().as_str()));
    assert_eq!(jobs[0]["scheme"].as_str(), Some("https"));
    assert_eq!(
        jobs[0]["basic_auth"]["username"].as_str(),
        Some("prometheus")
    );
    let out = Command::new(std::env::var("PROMTOOL").unwrap_or_else(|_| "promtool".into()))
        .args(["check", "config"])
        .arg(&path)
        .output()
        .expect("promtool runs (scripts/install-test-deps.sh)");
    assert!(out.status.success(), "{}", describe(&out));
}
