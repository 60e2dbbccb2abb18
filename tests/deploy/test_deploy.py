"""The monitoring stack in deploy/ agrees with what bulksend exports and with itself.

A dashboard panel or an alert that names a metric or a label bulksend does not export shows
"No data" or never fires, silently; these tests catch that here. Prometheus' own checks
(config, rule syntax, the alert unit tests in alerts_test.yml, PromQL syntax of the dashboard
queries) need ``promtool`` (Debian: ``apt-get install prometheus``) and are skipped without it.
No YAML parser is a project dependency, so the YAML files are read with a few targeted
regexes for the cross-checks and left to promtool for the rest.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from prometheus_client import Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bulksend.metrics import CountedFamily, CountedHistogram, FeedbackMetrics, Metrics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = DEPLOY / "Dockerfile.dockerignore"
COMPOSE = DEPLOY / "docker-compose.yml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERTS_TEST = DEPLOY / "prometheus" / "alerts_test.yml"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = DEPLOY / "grafana" / "provisioning" / "dashboards" / "dashboards.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "bulksend.json"

# Labels Prometheus attaches to every scraped series, and the histogram bucket label.
TARGET_LABELS = frozenset({"instance", "job"})
PANEL_TYPES = frozenset({"timeseries", "stat", "bargauge"})
# Grafana's interval variables, replaced by a plain duration to check the PromQL.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "1h", "$__interval": "15s"}

# bulksend's own metrics and the standard process_* series its registry carries.
METRIC_NAME = re.compile(r"\b(?:bulksend|process)_[a-z_]+\b")
SELECTOR = re.compile(r"\b((?:bulksend|process)_[a-z_]+)\s*\{([^}]*)\}")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
GROUPING = re.compile(r"\b(by|without)\s*\(([^)]*)\)")
VECTOR_MATCHING = re.compile(r"\b(on|ignoring)\s*\(([^)]*)\)")
HELP_VALUES = re.compile(r"\(([a-z0-9_]+(?:, [a-z0-9_]+)+)\)")


# --- what bulksend exports -------------------------------------------------------------------


def exported() -> dict[str, frozenset[str]]:
    """Every sample name a fresh :class:`Metrics` (a run's) or :class:`FeedbackMetrics` (the
    return path's) exposes, with its label names.

    Labelled metrics expose nothing until a child exists, so each gets one with dummy labels.
    """
    samples: dict[str, set[str]] = {}
    for metrics in (Metrics(), FeedbackMetrics()):
        for name, labels in _exported(metrics).items():
            samples.setdefault(name, set()).update(labels)
    return {name: frozenset(labels) for name, labels in samples.items()}


def _exported(metrics: Metrics | FeedbackMetrics) -> dict[str, set[str]]:
    for metric in vars(metrics).values():
        if not isinstance(metric, Counter | Gauge | Histogram | CountedFamily | CountedHistogram):
            continue
        # prometheus-client keeps the label names private; there is no public accessor.
        label_names: tuple[str, ...] = getattr(metric, "_labelnames", ())
        child = metric.labels(*["x"] * len(label_names)) if label_names else metric
        if isinstance(child, Histogram | CountedHistogram):
            child.observe(0.1)
        elif isinstance(child, Gauge):
            child.set(1)
        else:
            child.inc()
    text = generate_latest(metrics.registry).decode()
    samples: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, set()).update(sample.labels)
    return samples


def help_texts() -> dict[str, str]:
    """HELP text by sample name (``bulksend_recipients_total`` -> its metric's help)."""
    text = "".join(generate_latest(m.registry).decode() for m in (Metrics(), FeedbackMetrics()))
    helps = dict(re.findall(r"^# HELP (\S+) (.*)$", text, re.MULTILINE))
    by_sample: dict[str, str] = {}
    for name, help_text in helps.items():
        for suffix in ("", "_total", "_bucket", "_sum", "_count", "_created"):
            by_sample[name + suffix] = help_text
    return by_sample


EXPORTED = exported()
HELP = help_texts()


# --- reading the deploy files ----------------------------------------------------------------


def yaml_values(path: Path, key: str) -> list[str]:
    """The values of ``key:`` in a YAML file: inline, quoted, or a ``|``/``>`` block scalar.

    Enough for the files in deploy/, which keep comments out of block scalars.
    """
    lines = path.read_text().splitlines()
    values = []
    key_line = re.compile(rf"^(\s*)(?:- )?{key}:\s*(.*?)\s*$")
    for i, line in enumerate(lines):
        match = key_line.match(line)
        if match is None:
            continue
        indent, rest = len(match.group(1)), match.group(2)
        if rest in {"|", "|-", ">", ">-"} or rest.endswith((" |", " >-", " >", " |-")):
            block = []
            for following in lines[i + 1 :]:
                if following.strip() and len(following) - len(following.lstrip()) <= indent:
                    break
                block.append(following.strip())
            values.append("\n".join(block).strip())
        else:
            values.append(rest.strip("'\""))
    return values


def load_dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def dashboard_exprs() -> list[tuple[str, str]]:
    return [
        (f"dashboard panel {panel['title']!r}", target["expr"])
        for panel in load_dashboard()["panels"]
        for target in panel.get("targets", [])
    ]


def alert_exprs() -> list[tuple[str, str]]:
    names = yaml_values(ALERTS, "alert")
    exprs = yaml_values(ALERTS, "expr")
    assert len(names) == len(exprs), "every alert rule needs exactly one expr"
    return [(f"alert {name}", expr) for name, expr in zip(names, exprs, strict=True)]


def alert_test_series() -> list[tuple[str, str]]:
    return [(f"{ALERTS_TEST.name} series", s) for s in yaml_values(ALERTS_TEST, "series")]


def all_exprs() -> list[tuple[str, str]]:
    return dashboard_exprs() + alert_exprs()


def group_after(expr: str, start: int) -> str:
    """The parenthesised group opening at or after ``start`` (whitespace skipped)."""
    i = start
    while i < len(expr) and expr[i].isspace():
        i += 1
    if i == len(expr) or expr[i] != "(":
        return ""
    depth = 0
    for j in range(i, len(expr)):
        depth += {"(": 1, ")": -1}.get(expr[j], 0)
        if depth == 0:
            return expr[i : j + 1]
    return ""


def group_before(expr: str, end: int) -> str:
    """The parenthesised group closing just before ``end`` (``sum(x) by (l)`` form)."""
    i = end - 1
    while i >= 0 and expr[i].isspace():
        i -= 1
    if i < 0 or expr[i] != ")":
        return ""
    depth = 0
    for j in range(i, -1, -1):
        depth += {")": 1, "(": -1}.get(expr[j], 0)
        if depth == 0:
            return expr[j : i + 1]
    return ""


def label_list(text: str) -> list[str]:
    return [label.strip() for label in text.split(",") if label.strip()]


def problems_in(expr: str) -> Iterator[str]:
    """Every metric or label ``expr`` uses that bulksend does not export."""
    for name in METRIC_NAME.findall(expr):
        if name not in EXPORTED:
            yield f"metric {name} is not exported"
    for name, body in SELECTOR.findall(expr):
        labels = EXPORTED.get(name, frozenset()) | TARGET_LABELS
        for label, op, value in MATCHER.findall(body):
            if label not in labels:
                yield f"{name} has no label {label!r}"
                continue
            # Best effort on values: where HELP lists the values, e.g. "(ok, cached)", a plain
            # value or alternation must be among them (a typo matches nothing, silently).
            # Target labels and site names are not enumerable.
            if label in TARGET_LABELS or label == "site":
                continue
            documented = {
                v for group in HELP_VALUES.findall(HELP.get(name, "")) for v in group.split(", ")
            }
            if documented and op in {"=", "=~"} and re.fullmatch(r"[a-z0-9_|]+", value):
                for alternative in value.split("|"):
                    if alternative not in documented:
                        yield f"{name}{{{label}={alternative!r}}}: not in its HELP {documented}"
    for match in GROUPING.finditer(expr):
        group = group_after(expr, match.end()) or group_before(expr, match.start())
        for name in METRIC_NAME.findall(group):
            for label in label_list(match.group(2)):
                if label not in EXPORTED.get(name, frozenset()) | TARGET_LABELS:
                    yield f"{match.group(1)} ({label}) over {name}, which has no such label"
    everywhere = TARGET_LABELS.union(*(EXPORTED.get(n, ()) for n in METRIC_NAME.findall(expr)))
    for match in VECTOR_MATCHING.finditer(expr):
        for label in label_list(match.group(2)):
            if label not in everywhere:
                yield f"{match.group(1)} ({label}): no metric in the expression has it"


# --- 1. names and labels ----------------------------------------------------------------------


def test_exported_names_cover_every_kind_of_sample() -> None:
    # Guards the helper itself: if touching the metrics failed, every check below would be
    # vacuous or wrong.
    assert "bulksend_recipients_total" in EXPORTED
    assert EXPORTED["bulksend_site_recipients_total"] >= {"site", "outcome"}
    assert "le" in EXPORTED["bulksend_smtp_transaction_seconds_bucket"]
    assert "bulksend_queue_depth" in EXPORTED
    assert "bulksend_recipients" not in EXPORTED  # counters are exposed with _total only


CHECKED = all_exprs() + alert_test_series()


@pytest.mark.parametrize(("where", "expr"), CHECKED, ids=[where for where, _ in CHECKED])
def test_expression_uses_exported_metrics_and_labels(where: str, expr: str) -> None:
    assert METRIC_NAME.search(expr) or "up{" in expr, f"{where}: no bulksend metric in {expr!r}"
    problems = list(problems_in(expr))
    assert not problems, f"{where}: {expr!r}:\n" + "\n".join(problems)


def test_every_metric_is_on_the_dashboard() -> None:
    used = {name for _, expr in dashboard_exprs() for name in METRIC_NAME.findall(expr)}
    bases = {re.sub(r"_(total|bucket|sum|count|created)$", "", name) for name in EXPORTED}
    missing = {
        base
        for base in bases
        if not any(name == base or name.startswith(base + "_") for name in used)
    }
    assert not missing, f"metrics no dashboard panel shows: {sorted(missing)}"


def test_checker_catches_wrong_names_and_labels() -> None:
    assert list(problems_in("rate(bulksend_recipient_total[5m])"))
    assert list(problems_in("rate(bulksend_recipients[5m])"))
    assert list(problems_in('bulksend_recipients_total{site="a"}'))
    assert list(problems_in('bulksend_recipients_total{outcome="deliverd"}'))
    assert list(problems_in("sum by (site) (rate(bulksend_recipients_total[5m]))"))
    assert list(problems_in("sum(rate(bulksend_recipients_total[5m])) by (site)"))
    assert list(problems_in("histogram_quantile(0.9, sum by (le) (bulksend_queue_depth))"))
    assert not list(problems_in("sum by (site, outcome) (bulksend_site_recipients_total)"))


# --- 2. the dashboard -------------------------------------------------------------------------


def provisioned_datasource_uid() -> str:
    (uid,) = yaml_values(DATASOURCES, "uid")
    return uid


def test_dashboard_is_a_valid_grafana_model() -> None:
    dashboard = load_dashboard()
    uid = provisioned_datasource_uid()
    assert dashboard["uid"]
    assert dashboard["title"]
    assert 36 <= dashboard["schemaVersion"] <= 41
    panels = dashboard["panels"]
    assert panels
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(ids)}"
    titles = [panel["title"] for panel in panels]
    assert len(titles) == len(set(titles)), "panel titles must be unique"
    for panel in panels:
        where = f"panel {panel['title']!r}"
        assert panel["type"] in PANEL_TYPES, where
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, where
        pos = panel["gridPos"]
        assert pos["w"] > 0, where
        assert pos["h"] > 0, where
        assert pos["x"] >= 0, where
        assert pos["x"] + pos["w"] <= 24, where
        assert panel["targets"], f"{where} has no query"
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), where
        for target in panel["targets"]:
            assert target["expr"].strip(), f"{where}: target {target['refId']} has no expr"
            assert target.get("datasource", panel["datasource"])["uid"] == uid, where


def test_dashboard_panels_do_not_overlap() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in load_dashboard()["panels"]:
        pos = panel["gridPos"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                other = cells.setdefault((x, y), panel["title"])
                assert other == panel["title"], f"{panel['title']!r} overlaps {other!r}"


def test_grafana_provisioning_points_at_the_mounted_dashboards() -> None:
    (path,) = yaml_values(DASHBOARD_PROVIDERS, "path")
    compose = COMPOSE.read_text()
    assert f"./grafana/dashboards:{path}" in compose
    assert "./grafana/provisioning:/etc/grafana/provisioning" in compose
    assert yaml_values(DATASOURCES, "url") == ["http://prometheus:9090"]


def test_alert_descriptions_name_real_panels() -> None:
    titles = {panel["title"] for panel in load_dashboard()["panels"]}
    quoted = {
        title
        for description in yaml_values(ALERTS, "description")
        for title in re.findall(r'"([^"]+)"', " ".join(description.split()))
    }
    assert quoted, "the alert descriptions should point at dashboard panels"
    assert quoted <= titles, f"not panel titles: {sorted(quoted - titles)}"


# --- 3. Prometheus' own checks ----------------------------------------------------------------


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not installed (Debian: apt-get install prometheus)")
    return path


def run_promtool(*args: str | Path) -> None:
    result = subprocess.run(
        [promtool(), *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_config_is_valid() -> None:
    run_promtool("check", "config", PROMETHEUS_CONFIG)


def test_alert_rules_are_valid() -> None:
    run_promtool("check", "rules", ALERTS)


def test_alert_rules_pass_their_unit_tests() -> None:
    run_promtool("test", "rules", ALERTS_TEST)


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    # promtool has no standalone query parser: recording rules get their expr parsed.
    rules = []
    for panel in load_dashboard()["panels"]:
        for target in panel["targets"]:
            query = target["expr"]
            for variable, duration in GRAFANA_VARIABLES.items():
                query = query.replace(variable, duration)
            # The rule name says which panel and target a parse error is in.
            name = f"dashboard:panel_{panel['id']}_{target['refId']}"
            rules.append({"record": name, "expr": query})
    rules_file = tmp_path / "dashboard_rules.yml"
    # JSON is YAML.
    rules_file.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    run_promtool("check", "rules", rules_file)


def test_every_alert_has_severity_annotations_and_a_unit_test() -> None:
    text = ALERTS.read_text()
    rules = re.split(r"\n\s*- alert: ", text)[1:]
    assert len(rules) >= 5
    tested = set(yaml_values(ALERTS_TEST, "alertname"))
    for rule in rules:
        name = rule.split()[0]
        assert re.search(r"\bseverity: (critical|warning|info)\b", rule), name
        assert re.search(r"\bsummary: ", rule), name
        assert re.search(r"\bdescription: ", rule), name
        assert name in tested, f"{name} has no case in {ALERTS_TEST.name}"


# --- 4. Dockerfile and compose ------------------------------------------------------------------


def instruction(name: str) -> list[str]:
    return re.findall(rf"^{name}\s+(.+)$", DOCKERFILE.read_text(), re.MULTILINE)


def test_dockerfile_builds_from_the_repository_as_a_non_root_user() -> None:
    assert all(image.startswith("python:3.11-slim") for image in instruction("FROM"))
    (user,) = instruction("USER")
    assert user.split(":")[0] not in {"0", "root"}
    assert json.loads(instruction("ENTRYPOINT")[0]) == ["bulksend"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "bulksend" in scripts
    # The build context is the repository root; everything `pip install .` needs must be in
    # it and let through by the allow-list.
    for copy in instruction("COPY"):
        if "--from=" not in copy:
            *sources, _destination = copy.split()
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: no such path in the repo"
    allowed = [
        line[1:].rstrip("/")
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.startswith("!")
    ]
    assert {"pyproject.toml", "bulksend"} <= set(allowed)
    assert (ROOT / "pyproject.toml").is_file()
    assert (ROOT / "bulksend" / "__init__.py").is_file()


def test_compose_refers_to_files_that_exist() -> None:
    compose = COMPOSE.read_text()
    (context,) = re.findall(r"^\s+context:\s*(\S+)", compose, re.MULTILINE)
    (dockerfile,) = re.findall(r"^\s+dockerfile:\s*(\S+)", compose, re.MULTILINE)
    assert (DEPLOY / context / dockerfile).resolve() == DOCKERFILE
    mounts = re.findall(r"^\s+- \"?(\.{1,2}/[^:\"]+):([^:\"]+)", compose, re.MULTILINE)
    assert len(mounts) >= 4
    for host, container in mounts:
        assert (DEPLOY / host).exists(), f"volume {host}: no such path in deploy/"
        assert container.startswith("/")
    # rule_files paths are relative to the config file: both must land in the same folder.
    targets = dict(mounts)
    config_dir = Path(targets["./prometheus/prometheus.yml"]).parent
    rule_files = re.findall(r"^\s+- (\S+\.yml)$", PROMETHEUS_CONFIG.read_text(), re.MULTILINE)
    assert rule_files == ["alerts.yml"]
    for rule_file in rule_files:
        assert targets[f"./prometheus/{rule_file}"] == str(config_dir / rule_file)
    # Prometheus finds the compose services by DNS (tests/deploy/test_distributed.py).
    scrape_names = re.findall(r"names: \[([^]]+)\]", PROMETHEUS_CONFIG.read_text())
    assert scrape_names == ['"bulksend", "worker"']
    assert re.search(r"^  bulksend:$", compose, re.MULTILINE)
    assert re.search(r"^  worker:$", compose, re.MULTILINE)


def test_default_command_matches_the_cli() -> None:
    command = json.loads(instruction("CMD")[0])
    assert command[:1] == ["demo"]
    assert command[command.index("--metrics-port") + 1] == "9464"
    assert command[command.index("--metrics-host") + 1] == "0.0.0.0"
    if importlib.util.find_spec("bulksend.cli") is None:
        pytest.skip("bulksend.cli not written yet: cannot check the image's default command")
    main = importlib.import_module("bulksend.cli").main
    assert isinstance(main, click.Group)
    with click.Context(main) as ctx:
        demo = main.get_command(ctx, "demo")
    assert demo is not None, "the image runs `bulksend demo`"
    options = {opt for param in demo.params for opt in getattr(param, "opts", [])}
    flags = {arg for arg in command if arg.startswith("--")}
    assert flags <= options, f"`bulksend demo` lacks {sorted(flags - options)}"
