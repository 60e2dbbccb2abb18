"""deploy/kubernetes: schema-valid manifests whose Indexed Job runs one shard per index."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

MANIFESTS = Path(__file__).parents[2] / "deploy" / "kubernetes"
CORE = ["configmap.yaml", "job.yaml", "pvc.yaml"]


def load(name: str) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((MANIFESTS / name).read_text())
    return document


@pytest.mark.parametrize("name", CORE)
def test_manifest_is_valid_against_the_kubernetes_schema(name: str) -> None:
    # kubernetes-validate ships the upstream OpenAPI schemas: no cluster needed.
    kubernetes_validate.validate(load(name), kubernetes_validate.latest_version(), strict=True)


def test_podmonitor_selects_the_job_pods_metrics_port() -> None:
    monitor = load("podmonitor.yaml")
    job = load("job.yaml")
    assert monitor["kind"] == "PodMonitor"
    pod = job["spec"]["template"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    ports = {p["name"] for p in pod["spec"]["containers"][0]["ports"]}
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] in ports


def test_indexed_job_runs_one_shard_per_index() -> None:
    spec = load("job.yaml")["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"]
    container = spec["template"]["spec"]["containers"][0]
    args = container["args"]
    assert args[0] == "send"
    shard = args[args.index("--shard") + 1]
    assert shard == f"$(JOB_COMPLETION_INDEX)/{spec['completions']}"
    env = {e["name"]: e for e in container["env"]}
    assert (
        "job-completion-index" in env["JOB_COMPLETION_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"]
    )
    # Each shard's journal on its own directory; metrics scraped from every pod.
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["journals"]["subPathExpr"] == "shard-$(JOB_COMPLETION_INDEX)"
    annotations = spec["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == args[args.index("--metrics-port") + 1]
    claim = spec["template"]["spec"]["volumes"][1]["persistentVolumeClaim"]["claimName"]
    assert claim == load("pvc.yaml")["metadata"]["name"]


def test_configmap_holds_a_loadable_campaign(tmp_path: Path) -> None:
    from bulksend.config import load_campaign  # noqa: PLC0415

    data = load("configmap.yaml")["data"]
    for name, text in data.items():
        (tmp_path / name).write_text(text)
    toml = (tmp_path / "campaign.toml").read_text().replace("/journal/", f"{tmp_path}/")
    (tmp_path / "campaign.toml").write_text(toml)
    config = load_campaign(tmp_path / "campaign.toml", {})
    assert config.id == "spring-2026"


def _send_params(tmp_path: Path) -> dict[str, Any]:
    """The Job's `send` command line as the CLI parses it (every option must exist)."""
    from bulksend.cli.send import send  # noqa: PLC0415

    spec = load("job.yaml")["spec"]
    args = list(spec["template"]["spec"]["containers"][0]["args"])
    assert args[0] == "send"
    campaign = tmp_path / "campaign.toml"
    campaign.touch()
    args = [str(campaign) if a == "/campaign/campaign.toml" else a for a in args[1:]]
    args = [a.replace("$(JOB_COMPLETION_INDEX)", "0") for a in args]
    return dict(send.make_context("send", args).params)


def test_a_completed_shard_with_bounces_succeeds_and_only_config_errors_fail_the_index(
    tmp_path: Path,
) -> None:
    params = _send_params(tmp_path)
    # Any real campaign has bounces: exit 4 would fail (and retry) every pod.
    assert params["exit_zero_when_complete"] is True
    rules = load("job.yaml")["spec"]["podFailurePolicy"]["rules"]
    fail_index = [r for r in rules if r["action"] == "FailIndex"]
    assert [r["onExitCodes"]["values"] for r in fail_index] == [[1, 2]]
    codes = {v for r in rules if "onExitCodes" in r for v in r["onExitCodes"]["values"]}
    assert 3 not in codes  # stopped (SIGTERM): retried, and the retry resumes the journal
    # The sent record lives on the shard's own volume, next to its journal.
    assert str(params["sent_record"]).startswith("/journal/")


def test_termination_grace_exceeds_the_send_grace(tmp_path: Path) -> None:
    grace = _send_params(tmp_path)["grace"]
    pod = load("job.yaml")["spec"]["template"]["spec"]
    # Kubernetes' default is 30 s, the same as --grace's: the journal flush needs more.
    assert pod["terminationGracePeriodSeconds"] >= grace + 10
