//! The report: the markdown table, and every invalid run.

use serde_json::Value;

use super::*;

/// The markdown table of the report.
pub(crate) fn markdown(results: &[Value], machine: &str) -> String {
    let mut md = String::from("# dishflow benchmark report\n\n");
    md.push_str(machine);
    md.push_str("\n\n| workload | engine | median s (min–max) | records/s | empty run s | records/s beyond the empty run | CPU µs/record | peak RSS MB | rows written | vs dishflow |\n|---|---|---|---|---|---|---|---|---|---|\n");
    for r in results {
        let w = r["workload"].as_str().unwrap_or("?");
        let Some(engines) = r["engines"].as_object().cloned() else {
            continue;
        };
        let ours = engines["dishflow"]["median_s"].as_f64().unwrap_or(f64::NAN);
        for (engine, s) in &engines {
            let median = s["median_s"].as_f64().unwrap_or(f64::NAN);
            let cell = |k: &str, digits: usize| {
                s[k].as_f64()
                    .map(|v| format!("{v:.digits$}"))
                    .unwrap_or_else(|| "—".into())
            };
            let mut range = match (s["min_s"].as_f64(), s["max_s"].as_f64()) {
                (Some(a), Some(b)) => format!(" ({a:.2}–{b:.2})"),
                _ => String::new(),
            };
            if let Some(invalid) = s["invalid_runs"].as_array().filter(|f| !f.is_empty()) {
                let why = invalid[0].as_str().unwrap_or_default();
                if s["median_s"].is_null() {
                    md.push_str(&format!(
                        "| {w} | {engine} | INVALID ({} run(s)): {why} | — | — | — | — | — | — | — |\n",
                        invalid.len()
                    ));
                    continue;
                }
                range.push_str(&format!("; {} more run(s) INVALID: {why}", invalid.len()));
            }
            md.push_str(&format!(
                "| {w} | {engine} | {median:.2}{range} | {} | {} | {} | {} | {} | {} | {} |\n",
                cell("records_per_s", 0),
                cell("empty_run_s", 2),
                cell("records_per_s_beyond_empty_run", 0),
                cell("cpu_us_per_record", 1),
                cell("max_rss_mb", 0),
                s["output_rows"]
                    .as_i64()
                    .map_or_else(|| "—".to_string(), |r| r.to_string()),
                // No ratio without a valid dishflow run.
                Some(median / ours)
                    .filter(|r| r.is_finite())
                    .map_or_else(|| "—".to_string(), |r| format!("{r:.2}×")),
            ));
        }
    }
    md.push_str("\n`vs dishflow` = the engine's median time ÷ dishflow's (below 1: faster than dishflow). `empty run s`: the same engine on an empty input (start, connect, stop), part of every run's time; `records/s beyond the empty run` = records ÷ (median − empty run). Every run's output is checked (each expected draft exactly once in Kafka and in Postgres; W5: the counters equal a SQL GROUP BY of the input; W6: every mart row equal to its SQL recomputation); a run that fails the check is INVALID and not in the numbers.\n");
    for r in results {
        md.push_str(&latency::markdown(r));
        md.push_str(&geo::markdown(r));
        md.push_str(&crate::dashboard::markdown(r));
        md.push_str(&crate::soak::markdown(r));
    }
    md
}

/// Every invalid run of the report, as "workload engine: why" (any `invalid_runs` list in
/// the results, at any depth: the throughput and the latency workloads alike).
pub(crate) fn invalid_runs(report: &Value) -> Vec<String> {
    fn walk(v: &Value, path: &mut Vec<String>, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    if k == "invalid_runs" {
                        for why in v.as_array().into_iter().flatten() {
                            out.push(format!(
                                "{}: {}",
                                path.join(" "),
                                why.as_str().unwrap_or("?")
                            ));
                        }
                    } else {
                        path.push(k.clone());
                        walk(v, path, out);
                        path.pop();
                    }
                }
            }
            Value::Array(items) => {
                for item in items {
                    let name = item["workload"].as_str().map(str::to_string);
                    if let Some(name) = &name {
                        path.push(name.clone());
                    }
                    walk(item, path, out);
                    if name.is_some() {
                        path.pop();
                    }
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(&report["results"], &mut Vec::new(), &mut out);
    out
}
