//! The deployment files stay consistent with the CLI: every dishflow command line and every
//! `DISHFLOW_*` variable in docker-compose.yml and scripts/deploy/k8s/dishflow.yaml parses
//! (flags exist, values are valid), a cluster's hostfile lists as many processes as it is
//! told to run, and nothing is published beyond 127.0.0.1. (No Docker engine or Kubernetes
//! here: the files are checked, not run.)

use std::collections::BTreeMap;
use std::ffi::OsStr;

use clap::{CommandFactory, Parser};
use dishflow::cli::Cli;
use yaml_rust2::{Yaml, YamlLoader};

fn load(path: &str) -> Vec<Yaml> {
    let text = std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR")))
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `yaml` with YAML 1.1 merge keys (`<<: *anchor`) applied, recursively.
fn merged(yaml: &Yaml) -> Yaml {
    match yaml {
        Yaml::Hash(hash) => {
            let mut out = yaml_rust2::yaml::Hash::new();
            if let Some(Yaml::Hash(base)) = hash.get(&Yaml::String("<<".into())) {
                for (k, v) in base {
                    out.insert(k.clone(), merged(v));
                }
            }
            for (k, v) in hash {
                if k.as_str() != Some("<<") {
                    out.insert(k.clone(), merged(v));
                }
            }
            Yaml::Hash(out)
        }
        Yaml::Array(items) => Yaml::Array(items.iter().map(merged).collect()),
        other => other.clone(),
    }
}

fn strings(yaml: &Yaml) -> Vec<String> {
    yaml.as_vec()
        .map(|v| v.iter().map(|s| scalar(s).expect("a string")).collect())
        .unwrap_or_default()
}

fn scalar(yaml: &Yaml) -> Option<String> {
    match yaml {
        Yaml::String(s) | Yaml::Real(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Checks one dishflow invocation: `args` after the program name, and its environment
/// (`None`: a value from elsewhere, e.g. a Kubernetes secret): every `DISHFLOW_*` variable
/// belongs to a flag of the subcommand, and the command line with the variables given as
/// those flags parses. Returns the environment.
fn check_invocation(
    what: &str,
    args: &[String],
    env: &BTreeMap<String, Option<String>>,
) -> BTreeMap<String, Option<String>> {
    let root = Cli::command();
    let sub = root
        .find_subcommand(&args[0])
        .unwrap_or_else(|| panic!("{what}: no subcommand {}", args[0]));
    let mut argv = vec!["dishflow".to_string()];
    argv.extend(args.iter().cloned());
    for (name, value) in env {
        if !name.starts_with("DISHFLOW_") {
            continue;
        }
        let arg = sub
            .get_arguments()
            .chain(root.get_arguments())
            .find(|arg| arg.get_env() == Some(OsStr::new(name)))
            .unwrap_or_else(|| panic!("{what}: `dishflow {}` has no {name}", args[0]));
        // A property file is read while parsing: it exists only where the job runs.
        let reads_a_file = arg.get_id() == "property_file";
        if let (Some(value), Some(long)) = (value, arg.get_long())
            && arg.get_action().takes_values()
            && !reads_a_file
        {
            argv.push(format!("--{long}={value}"));
        }
    }
    if let Err(error) = Cli::try_parse_from(&argv) {
        panic!("{what}: `{}` does not parse: {error}", argv.join(" "));
    }
    env.clone()
}

fn compose_env(service: &Yaml) -> BTreeMap<String, Option<String>> {
    service["environment"]
        .as_hash()
        .map(|hash| {
            hash.iter()
                .map(|(k, v)| (scalar(k).expect("name"), scalar(v)))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn docker_compose_uses_only_flags_and_variables_that_exist() {
    let doc = merged(&load("docker-compose.yml")[0]);
    let services = doc["services"].as_hash().expect("services");
    let mut dishflow_services = 0;
    let mut promos_processes = Vec::new();
    for (name, service) in services {
        let name = name.as_str().expect("service name");
        for port in strings(&service["ports"]) {
            assert!(
                port.starts_with("127.0.0.1:"),
                "{name} publishes {port} beyond loopback"
            );
        }
        if service["image"].as_str() != Some("dishflow:latest") {
            continue;
        }
        dishflow_services += 1;
        let command = strings(&service["command"]);
        let env = check_invocation(name, &command, &compose_env(service));
        if command[0] != "setup" {
            assert!(
                !service["healthcheck"].is_badvalue(),
                "{name}: a long-running service needs a healthcheck"
            );
        }
        if command[0] == "dashboard" {
            // Its healthcheck asks its own port, and the token is a secret, not a value.
            assert_eq!(env["DISHFLOW_LISTEN"].as_deref(), Some("0.0.0.0:8080"));
            assert!(
                strings(&service["secrets"]).contains(&"dashboard_token".to_string())
                    && env["DISHFLOW_AUTH_TOKEN_FILE"].as_deref()
                        == Some("/run/secrets/dashboard_token"),
                "{name}: beyond loopback only with a token"
            );
        } else if command[0] != "setup" {
            assert!(
                env.contains_key("DISHFLOW_METRICS_ADDR"),
                "{name}: /healthz is served"
            );
        }
        if command[0] == "promos" {
            let processes: usize = env["DISHFLOW_PROCESSES"]
                .as_deref()
                .expect("DISHFLOW_PROCESSES")
                .parse()
                .expect("a number");
            let index = command
                .iter()
                .position(|a| a == "--process")
                .expect("--process");
            promos_processes.push((
                processes,
                command[index + 1].parse::<usize>().expect("index"),
            ));
        }
    }
    assert_eq!(
        dishflow_services, 6,
        "setup, promos-0, promos-1, orders, geo, dashboard"
    );
    let hosts = doc["configs"]["hostfile"]["content"]
        .as_str()
        .expect("hostfile");
    let lines = hosts.lines().filter(|l| !l.trim().is_empty()).count();
    let mut indexes: Vec<usize> = promos_processes.iter().map(|(_, i)| *i).collect();
    indexes.sort();
    assert_eq!(
        indexes,
        (0..lines).collect::<Vec<_>>(),
        "one service per hostfile line"
    );
    assert!(promos_processes.iter().all(|(n, _)| *n == lines));
}

#[test]
fn the_kubernetes_example_uses_only_flags_and_variables_that_exist() {
    let docs = load("scripts/deploy/k8s/dishflow.yaml");
    let mut hosts = 0;
    let mut containers = 0;
    for doc in &docs {
        match doc["kind"].as_str() {
            Some("ConfigMap") => {
                hosts = doc["data"]["hosts"]
                    .as_str()
                    .expect("hosts")
                    .lines()
                    .count()
            }
            Some("StatefulSet") | Some("Deployment") => {
                let spec = &doc["spec"];
                for container in spec["template"]["spec"]["containers"]
                    .as_vec()
                    .expect("containers")
                {
                    containers += 1;
                    let env: BTreeMap<String, Option<String>> = container["env"]
                        .as_vec()
                        .expect("env")
                        .iter()
                        .map(|e| (scalar(&e["name"]).expect("name"), scalar(&e["value"])))
                        .collect();
                    let args = strings(&container["args"]);
                    let env = check_invocation("k8s", &args, &env);
                    if doc["kind"].as_str() == Some("StatefulSet") {
                        let processes: i64 = env["DISHFLOW_PROCESSES"]
                            .as_deref()
                            .expect("DISHFLOW_PROCESSES")
                            .parse()
                            .expect("a number");
                        assert_eq!(spec["replicas"].as_i64(), Some(processes), "replicas");
                        assert_eq!(spec["podManagementPolicy"].as_str(), Some("Parallel"));
                        assert!(env.contains_key("DISHFLOW_PROCESS"), "ordinal → process");
                    }
                }
            }
            _ => {}
        }
    }
    assert_eq!(containers, 2);
    assert_eq!(hosts, 2, "the hostfile lists both processes");
}

/// The metric families dishflow exposes, from its own text exposition: `(name, type)`.
/// A family with labels is exposed once it has a series, so one of each is recorded first,
/// as a running job would.
fn exposed_metrics() -> Vec<(String, String)> {
    use differential_dataflow::logging::BatchEvent;
    let m = dishflow::metrics::metrics();
    let partition = m.partition("topic", 0);
    partition.read(1);
    partition.position(1);
    partition.end(2);
    m.source("source").emitted(1, false);
    let sink = m.sink("sink");
    sink.written(1, std::time::Duration::from_millis(1));
    sink.flushed(std::time::Duration::from_millis(1));
    m.dead_lettered("reason");
    m.delivered("topic").inc();
    m.expect_workers(1);
    m.beat(0);
    m.output_frontier(Some(0));
    let mut log = dishflow::metrics::ArrangementLog::default();
    log.operator(1, "Arrange");
    log.event(
        &BatchEvent {
            operator: 1,
            length: 1,
        }
        .into(),
    );
    let text = m.render("deploy-test", 10_000);
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| {
            let (name, kind) = rest.split_once(' ')?;
            Some((name.to_string(), kind.to_string()))
        })
        .collect()
}

/// Whether `series` (a name in a PromQL expression) is a series of one of `families`: the
/// family itself, a counter's `_total`, a histogram's `_bucket`, `_sum` or `_count`.
fn is_exposed(series: &str, families: &[(String, String)]) -> bool {
    families.iter().any(|(name, kind)| {
        let suffixes: &[&str] = match kind.as_str() {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            _ => &[""],
        };
        suffixes.iter().any(|s| series == format!("{name}{s}"))
    })
}

#[test]
fn the_grafana_dashboard_names_only_metrics_that_exist() {
    let families = exposed_metrics();
    assert!(families.len() >= 15, "{families:?}");
    let path = "scripts/deploy/grafana/dashboards/dishflow.json";
    let text = std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR")))
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let mut named = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            for series in series_in(expr) {
                assert!(
                    is_exposed(&series, &families),
                    "panel {:?} names {series}, which dishflow does not expose",
                    panel["title"]
                );
                named += 1;
            }
        }
    }
    assert!(named >= 9, "{named} series named");
    // The example of a name that does not exist is refused.
    assert!(!is_exposed("dishflow_records_read_total", &families));
}

/// The `dishflow_*` names in a PromQL expression.
fn series_in(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("dishflow_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

#[test]
fn prometheus_scrapes_every_dishflow_job_of_docker_compose() {
    let doc = merged(&load("docker-compose.yml")[0]);
    let services = doc["services"].as_hash().expect("services");
    let mut jobs: Vec<String> = services
        .iter()
        .filter(|(_, s)| s["image"].as_str() == Some("dishflow:latest"))
        .filter(|(_, s)| {
            let command = strings(&s["command"]);
            !matches!(
                command.first().map(String::as_str),
                Some("setup" | "dashboard")
            )
        })
        .map(|(name, _)| format!("{}:9464", name.as_str().expect("name")))
        .collect();
    jobs.sort();
    let prometheus = load("scripts/deploy/prometheus/prometheus.yml");
    let mut targets: Vec<String> = prometheus[0]["scrape_configs"]
        .as_vec()
        .expect("scrape_configs")
        .iter()
        .flat_map(|c| c["static_configs"].as_vec().cloned().unwrap_or_default())
        .flat_map(|c| strings(&c["targets"]))
        .collect();
    targets.sort();
    assert_eq!(targets, jobs);
    for tool in ["prometheus", "grafana"] {
        assert!(
            !services[&Yaml::String(tool.into())].is_badvalue(),
            "{tool} in docker-compose.yml"
        );
    }
}
