"""deploy/kubernetes: schema-valid manifests whose Indexed Job runs one shard per index."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import kubernetes_validate
import pytest
import yaml

from bulksend.cli.output import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_STOPPED,
    EXIT_UNDELIVERED,
    exit_code,
)
from bulksend.journal import Status

MANIFESTS = Path(__file__).parents[2] / "deploy" / "kubernetes"
CORE = ["configmap.yaml", "job.yaml", "journal-pod.yaml", "pdb.yaml"]


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
    annotations = spec["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == args[args.index("--metrics-port") + 1]


def _journal_volume(pod: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The (mount, volume) of the pod's container that holds /journal."""
    (container,) = pod["containers"]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/journal"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    return mount, volume


def test_no_manifest_shares_a_read_write_many_volume() -> None:
    # SQLite's WAL needs shared memory and POSIX locks: not on NFS-like RWX volumes.
    for path in sorted(MANIFESTS.rglob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            text = yaml.safe_dump(document)
            assert "ReadWriteMany" not in text, path
            assert "ReadOnlyMany" not in text, path


def test_each_shard_journals_on_its_own_pod_volume(tmp_path: Path) -> None:
    pod = load("job.yaml")["spec"]["template"]["spec"]
    mount, volume = _journal_volume(pod)
    # A generic ephemeral volume: one ReadWriteOnce PVC per pod, created and deleted with it
    # (not a claim shared by every pod of the Job, whatever its access mode).
    assert "persistentVolumeClaim" not in volume
    assert "subPathExpr" not in mount
    claim = volume["ephemeral"]["volumeClaimTemplate"]["spec"]
    assert claim["accessModes"] == ["ReadWriteOnce"]
    assert claim["resources"]["requests"]["storage"]
    params = _send_params(tmp_path)
    # Everything the shard writes is on that volume.
    assert str(params["journal"]).startswith("/journal/")
    assert str(params["sent_record"]).startswith("/journal/")
    assert 'rejects = "/journal/' in load("configmap.yaml")["data"]["campaign.toml"]


def test_the_journal_pod_mounts_a_shard_pods_volume() -> None:
    job_pod = load("job.yaml")["spec"]["template"]["spec"]
    _mount, job_volume = _journal_volume(job_pod)
    reader = load("journal-pod.yaml")
    _reader_mount, reader_volume = _journal_volume(reader["spec"])
    # Kubernetes names an ephemeral volume's PVC `<pod name>-<volume name>`.
    claim = reader_volume["persistentVolumeClaim"]["claimName"]
    assert claim == f"SHARD_POD-{job_volume['name']}"
    assert "SHARD_POD" in reader["metadata"]["name"]
    assert reader["spec"]["securityContext"] == job_pod["securityContext"]
    assert reader["spec"]["volumes"][0] == job_pod["volumes"][0]  # the campaign


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


def _exit_code_rules() -> dict[str, set[int]]:
    """The podFailurePolicy's exit-code rules: action -> exit codes."""
    rules = load("job.yaml")["spec"]["podFailurePolicy"]["rules"]
    actions: dict[str, set[int]] = {}
    for rule in rules:
        if "onExitCodes" in rule:
            assert rule["onExitCodes"]["containerName"] == "bulksend"
            assert rule["onExitCodes"]["operator"] == "In"
            actions.setdefault(rule["action"], set()).update(rule["onExitCodes"]["values"])
    return actions


def test_a_completed_shard_with_bounces_is_a_succeeded_pod(tmp_path: Path) -> None:
    params = _send_params(tmp_path)
    # Any real campaign has bounces. Without the flag the pod would exit 4 and fail; a
    # podFailurePolicy cannot make it succeed (Ignore would re-run the shard).
    counts = dict.fromkeys(Status, 0) | {Status.DELIVERED: 90, Status.BOUNCED: 10}
    flag = params["exit_zero_when_complete"]
    assert exit_code(halted=False, complete=True, counts=counts, exit_zero_when_complete=flag) == (
        EXIT_OK
    )
    assert EXIT_UNDELIVERED not in set().union(*_exit_code_rules().values())


def test_config_errors_fail_their_index_and_nothing_is_retried() -> None:
    spec = load("job.yaml")["spec"]
    actions = _exit_code_rules()
    # A bad campaign (1) or command line (2, click's usage error): retrying cannot help.
    # Stopped (3, a drained node): only that shard, resumed by hand from its volume.
    assert actions == {"FailIndex": {EXIT_ERROR, click.UsageError.exit_code, EXIT_STOPPED}}
    # A replacement pod gets an empty journal and would send the shard again: no retries,
    # and no rule that retries (Ignore) or counts towards a retry (Count), not even for an
    # eviction.
    assert spec["backoffLimitPerIndex"] == 0
    assert spec["maxFailedIndexes"] >= spec["completions"]  # the other shards go on
    assert spec["template"]["spec"]["restartPolicy"] == "Never"


def test_nothing_deletes_a_running_shard_pod_and_its_journal() -> None:
    spec = load("job.yaml")["spec"]
    # The journal volume goes with its pod. FailJob makes the Job controller delete the pods
    # still running; so do activeDeadlineSeconds and, after the end, ttlSecondsAfterFinished
    # (before anyone collected the journals).
    actions = {rule["action"] for rule in spec["podFailurePolicy"]["rules"]}
    assert actions == {"FailIndex"}
    assert "activeDeadlineSeconds" not in spec
    assert "ttlSecondsAfterFinished" not in spec
    # Evictions (drains, autoscalers) delete pods too: the budget refuses them all.
    budget = load("pdb.yaml")["spec"]
    job_name = load("job.yaml")["metadata"]["name"]
    assert budget["selector"]["matchLabels"] == {"job-name": job_name}
    assert budget["minAvailable"] == spec["parallelism"]
    annotations = spec["template"]["metadata"]["annotations"]
    assert annotations["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "false"


def test_termination_grace_exceeds_the_send_grace(tmp_path: Path) -> None:
    params = _send_params(tmp_path)
    args = load("job.yaml")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--grace" in args  # explicit, so the two numbers sit side by side
    pod = load("job.yaml")["spec"]["template"]["spec"]
    # Kubernetes' default is 30 s, the same as --grace's: the journal flush needs more.
    assert pod["terminationGracePeriodSeconds"] >= params["grace"] + 10
