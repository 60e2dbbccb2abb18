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
