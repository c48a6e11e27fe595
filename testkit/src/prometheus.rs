//! Alerting rules checked against what real processes export: an alert whose
//! selector names a metric or label that no Fanout process has never fires, and
//! nothing else would tell.
//!
//! [`rules`] reads the alerts out of a rendered PrometheusRule, [`Exposition`] reads
//! `/metrics` answers, and [`Exposition::unmatched`] lists the selectors of an
//! expression that select nothing.

use std::collections::{BTreeMap, BTreeSet};

use promql_parser::parser::{self, Expr, VectorSelector};
use promql_parser::util::{ExprVisitor, walk_expr};

/// Labels Prometheus adds from the scrape target (Prometheus Operator's relabelling):
/// a rule may select on them, but no process exports them.
pub const TARGET_LABELS: [&str; 7] = [
    "namespace",
    "pod",
    "job",
    "instance",
    "service",
    "container",
    "endpoint",
];

/// The objects of a rendered multi-document YAML (e.g. `helm template` output).
pub fn objects(rendered: &str) -> Result<Vec<serde_json::Value>, String> {
    serde_yaml_ng::Deserializer::from_str(rendered)
        .map(|document| serde::Deserialize::deserialize(document).map_err(|e| e.to_string()))
        .filter(|object: &Result<serde_json::Value, String>| {
            object.as_ref().map_or(true, |o| !o.is_null())
        })
        .collect()
}

/// `(alert name, expression)` of every alert in the PrometheusRule objects of a
/// rendered multi-document YAML.
pub fn rules(rendered: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for object in objects(rendered)? {
        if object["kind"] != "PrometheusRule" {
            continue;
        }
        let groups = object["spec"]["groups"]
            .as_array()
            .ok_or("no spec.groups")?;
        for rule in groups
            .iter()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        {
            if let (Some(alert), Some(expr)) = (rule["alert"].as_str(), rule["expr"].as_str()) {
                out.push((alert.to_string(), expr.to_string()));
            }
        }
    }
    Ok(out)
}

/// `(panel title, query)` of every Prometheus query of a Grafana dashboard (its
/// JSON), with the variables replaced by values that select what they would: a
/// query variable by its "All" value, `$__rate_interval` and `$__interval` by `5m`,
/// `$__range` by `1h`. A variable's own `label_values(metric, label)` query comes
/// out as the selector `metric{label=~".+"}`.
pub fn dashboard_queries(json: &str) -> Result<Vec<(String, String)>, String> {
    let dashboard: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let mut variables: Vec<(String, String)> = ["__rate_interval", "__interval"]
        .map(|v| (v.to_string(), "5m".to_string()))
        .into_iter()
        .chain([("__range".to_string(), "1h".to_string())])
        .collect();
    let mut out = Vec::new();
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if variable["type"] != "query" {
            continue;
        }
        let name = variable["name"]
            .as_str()
            .ok_or("a variable without a name")?;
        let all = variable["allValue"].as_str().unwrap_or(".*");
        variables.push((name.to_string(), all.to_string()));
        let query = variable["query"]["query"]
            .as_str()
            .or(variable["query"].as_str())
            .ok_or_else(|| format!("variable {name} has no query"))?;
        let inner = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .ok_or_else(|| format!("variable {name}: only label_values(metric, label) is read"))?;
        let (metric, label) = inner
            .split_once(',')
            .ok_or_else(|| format!("variable {name}: {query}"))?;
        out.push((
            format!("variable {name}"),
            format!("{}{{{}=~\".+\"}}", metric.trim(), label.trim()),
        ));
    }
    // Longest names first: `$routes` must not be read as `$route` and an `s`.
    variables.sort_by_key(|(name, _)| std::cmp::Reverse(name.len()));
    let panels = dashboard["panels"].as_array().into_iter().flatten();
    let nested = panels
        .clone()
        .flat_map(|p| p["panels"].as_array().into_iter().flatten());
    for panel in panels.chain(nested) {
        let title = panel["title"].as_str().unwrap_or("(untitled)");
        for target in panel["targets"].as_array().into_iter().flatten() {
            let Some(expr) = target["expr"].as_str() else {
                continue;
            };
            let mut expr = expr.to_string();
            for (name, value) in &variables {
                expr = expr
                    .replace(&format!("${{{name}}}"), value)
                    .replace(&format!("${name}"), value);
            }
            out.push((title.to_string(), expr));
        }
    }
    Ok(out)
}

/// The series and metric families of one or more `/metrics` answers.
#[derive(Default)]
pub struct Exposition {
    /// Sample name (e.g. `fanout_deliveries_total`) to the label sets seen.
    series: BTreeMap<String, Vec<BTreeMap<String, String>>>,
    /// Families declared by `# TYPE` lines, with their sample names (a counter
    /// `x` has samples `x_total`; a histogram `x_bucket`, `x_sum`, `x_count`).
    declared: BTreeSet<String>,
}

impl Exposition {
    /// Adds one Prometheus text or OpenMetrics answer.
    pub fn add(&mut self, text: &str) -> Result<(), String> {
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split_whitespace();
                let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                    return Err(format!("bad TYPE line: {line}"));
                };
                let suffixes: &[&str] = match kind {
                    "counter" => &["_total", "_created"],
                    "histogram" => &["_bucket", "_sum", "_count", "_created"],
                    "summary" => &["", "_sum", "_count", "_created"],
                    _ => &[""],
                };
                for suffix in suffixes {
                    // Text format 0.0.4 declares counters by their sample name.
                    let sample = if name.ends_with(suffix) {
                        name.to_string()
                    } else {
                        format!("{name}{suffix}")
                    };
                    self.declared.insert(sample);
                }
            } else if !line.starts_with('#') {
                let (name, labels) = parse_sample(line)?;
                self.series.entry(name).or_default().push(labels);
            }
        }
        Ok(())
    }

    /// Why each series selector in `expr` selects nothing: empty when every one
    /// selects at least one series.
    pub fn unmatched(&self, expr: &str) -> Result<Vec<String>, String> {
        let expr = parser::parse(expr)?;
        let mut selectors = Selectors(Vec::new());
        walk_expr(&mut selectors, &expr).map_err(|e| e.to_string())?;
        Ok(selectors
            .0
            .iter()
            .filter_map(|s| self.explain_no_match(s))
            .collect())
    }

    fn explain_no_match(&self, selector: &VectorSelector) -> Option<String> {
        let Some(name) = selector.name.as_deref() else {
            return Some(format!("{selector}: no metric name"));
        };
        let matchers: Vec<_> = selector
            .matchers
            .matchers
            .iter()
            .filter(|m| m.name != "__name__" && !TARGET_LABELS.contains(&m.name.as_str()))
            .collect();
        let series = self.series.get(name).map(Vec::as_slice).unwrap_or_default();
        let selects = |labels: &BTreeMap<String, String>| {
            matchers
                .iter()
                .all(|m| m.is_match(labels.get(&m.name).map_or("", String::as_str)))
        };
        if series.iter().any(selects) {
            None
        } else if !self.declared.contains(name) && series.is_empty() {
            Some(format!("{selector}: no process exports {name}"))
        } else {
            Some(format!(
                "{selector}: none of the {} series of {name} matches",
                series.len()
            ))
        }
    }
}

/// Every vector selector of an expression, those inside range selectors included.
struct Selectors(Vec<VectorSelector>);

impl ExprVisitor for Selectors {
    type Error = String;

    fn pre_visit(&mut self, expr: &Expr) -> Result<bool, String> {
        match expr {
            Expr::VectorSelector(vs) => self.0.push(vs.clone()),
            Expr::MatrixSelector(ms) => self.0.push(ms.vs.clone()),
            _ => {}
        }
        Ok(true)
    }
}

/// `name{a="x",b="y"} value [timestamp]` into its name and labels.
fn parse_sample(line: &str) -> Result<(String, BTreeMap<String, String>), String> {
    let end = line
        .find(['{', ' '])
        .ok_or_else(|| format!("bad sample line: {line}"))?;
    let name = line[..end].to_string();
    let mut labels = BTreeMap::new();
    if line[end..].starts_with('{') {
        let mut rest = &line[end + 1..];
        loop {
            rest = rest.trim_start_matches([',', ' ']);
            if rest.starts_with('}') {
                break;
            }
            let (label, after) = rest
                .split_once("=\"")
                .ok_or_else(|| format!("bad labels in: {line}"))?;
            let mut value = String::new();
            let mut chars = after.char_indices();
            let consumed = loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c)) => value.push(c),
                        None => return Err(format!("unterminated label value in: {line}")),
                    },
                    Some((i, '"')) => break i + 1,
                    Some((_, c)) => value.push(c),
                    None => return Err(format!("unterminated label value in: {line}")),
                }
            };
            labels.insert(label.trim().to_string(), value);
            rest = &after[consumed..];
        }
    }
    Ok((name, labels))
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = r#"# HELP fanout_deliveries Events finished.
# TYPE fanout_deliveries counter
fanout_deliveries_total{route="shop/orders",target="crm",outcome="delivered"} 3
fanout_deliveries_total{route="shop/orders",target="crm",outcome="dead_lettered"} 0
# TYPE fanout_gateway_events counter
fanout_gateway_events_total{route="shop/orders",outcome="accepted"} 9
# TYPE fanout_latency_seconds histogram
fanout_latency_seconds_bucket{le="0.1",note="a \"quoted\", value"} 1
# EOF
"#;

    fn exposition() -> Exposition {
        let mut e = Exposition::default();
        e.add(METRICS).unwrap();
        e
    }

    #[test]
    fn samples_are_read_with_escaped_label_values() {
        let e = exposition();
        let bucket = &e.series["fanout_latency_seconds_bucket"][0];
        assert_eq!(bucket["note"], "a \"quoted\", value");
        assert_eq!(bucket["le"], "0.1");
        assert!(e.declared.contains("fanout_deliveries_total"));
    }

    #[test]
    fn selectors_that_match_a_series_pass() {
        let e = exposition();
        let expr = r#"sum by (route) (increase(fanout_deliveries_total{outcome="dead_lettered", namespace="x"}[15m])) > 0
            or histogram_quantile(0.99, sum by (le) (rate(fanout_latency_seconds_bucket[5m]))) > 1"#;
        assert_eq!(e.unmatched(expr).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn a_missing_metric_or_a_wrong_label_name_or_value_is_reported() {
        let e = exposition();
        let unmatched = |expr| e.unmatched(expr).unwrap();
        assert!(unmatched("fanout_circuit_state == 2")[0].contains("no process exports"));
        for wrong in [
            r#"fanout_deliveries_total{outcome="dead-lettered"}"#,
            r#"fanout_deliveries_total{outcomes="dead_lettered"}"#,
        ] {
            assert!(
                unmatched(wrong)[0].contains("none of the 2 series"),
                "{wrong}"
            );
        }
        // Declared, with no series yet: nothing to select.
        let mut empty = Exposition::default();
        empty.add("# TYPE fanout_x counter\n").unwrap();
        assert!(empty.unmatched("fanout_x_total").unwrap()[0].contains("none of the 0"));
    }

    #[test]
    fn rules_are_read_from_rendered_yaml() {
        let yaml = "kind: Service\n---\nkind: PrometheusRule\nspec:\n  groups:\n    - name: g\n      rules:\n        - alert: A\n          expr: up == 0\n        - record: r\n          expr: up\n";
        assert_eq!(rules(yaml).unwrap(), [("A".into(), "up == 0".into())]);
    }

    #[test]
    fn dashboard_queries_come_with_their_variables_filled_in() {
        let json = r#"{
            "templating": {"list": [
                {"name": "datasource", "type": "datasource"},
                {"name": "route", "type": "query", "allValue": ".*",
                 "query": {"query": "label_values(fanout_deliveries_total, route)"}}
            ]},
            "panels": [
                {"type": "row", "title": "r", "panels": [
                    {"title": "nested", "targets": [{"expr": "up{route=~\"${route}\"}"}]}
                ]},
                {"title": "rate", "targets": [
                    {"expr": "rate(x_total{route=~\"$route\"}[$__rate_interval])"},
                    {"expr": "increase(x_total[$__range])"}
                ]}
            ]
        }"#;
        assert_eq!(
            dashboard_queries(json).unwrap(),
            [
                ("variable route", r#"fanout_deliveries_total{route=~".+"}"#),
                ("rate", r#"rate(x_total{route=~".*"}[5m])"#),
                ("rate", "increase(x_total[1h])"),
                ("nested", r#"up{route=~".*"}"#),
            ]
            .map(|(t, e)| (t.to_string(), e.to_string()))
        );
    }
}
