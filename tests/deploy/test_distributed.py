"""The distributed deployments: PostgreSQL journal, Redis/Valkey throttle, N workers.

deploy/kubernetes/distributed/ (an import Job, then a Job of workers) and the `distributed`
profile of deploy/docker-compose.yml: their command lines against the CLI's `import` and
`worker` commands, passwords only in mounted files, healthchecks, exit codes, what
Prometheus scrapes.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import click
import kubernetes_validate
import pytest
import yaml

from bulksend.cli.output import EXIT_OK, EXIT_UNDELIVERED

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
DISTRIBUTED = KUBERNETES / "distributed"
COMPOSE = DEPLOY / "docker-compose.yml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
MANIFESTS = ["configmap.yaml", "import-job.yaml", "workers-job.yaml"]
SECRET = "bulksend-stores"


def load(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(path.read_text())
    return document


def container(job: str) -> dict[str, Any]:
    (only,) = load(DISTRIBUTED / job)["spec"]["template"]["spec"]["containers"]
    result: dict[str, Any] = only
    return result


def option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def store_urls() -> dict[str, str]:
    data: dict[str, str] = load(DISTRIBUTED / "configmap.yaml")["data"]
    return data


def password_file(url: str) -> Path:
    """The one ``password_file`` a store URL names; asserts the URL itself holds no password."""
    parts = urlsplit(url)
    assert parts.scheme in {"postgresql", "redis"}, url
    assert parts.password is None, f"a password in {url!r}"
    query = parse_qs(parts.query)
    assert "password" not in query, url
    (path,) = query["password_file"]
    return Path(path)


def no_password_in(text: str) -> None:
    """No URL with a password, and no `password=` or `--requirepass`, in a command or value."""
    for url in re.findall(r"\b[a-z]+://\S+", text):
        assert urlsplit(url).password is None, f"a password in {url!r}"
    assert not re.search(r"[?&]password=|--requirepass|\s-a\s", text), text


# --- Kubernetes -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_is_valid_against_the_kubernetes_schema(name: str) -> None:
    kubernetes_validate.validate(
        load(DISTRIBUTED / name), kubernetes_validate.latest_version(), strict=True
    )


def test_workers_run_the_worker_command_against_both_stores() -> None:
    args = container("workers-job.yaml")["args"]
    assert args[0] == "worker"
    assert option(args, "--journal") == "$(JOURNAL_URL)"
    assert option(args, "--throttle") == "$(THROTTLE_URL)"
    assert urlsplit(store_urls()["JOURNAL_URL"]).scheme == "postgresql"
    assert urlsplit(store_urls()["THROTTLE_URL"]).scheme == "redis"
    import_args = container("import-job.yaml")["args"]
    assert import_args[:2] == ["import", "/campaign/campaign.toml"]
    assert option(import_args, "--journal") == "$(JOURNAL_URL)"


@pytest.mark.parametrize("job", ["import-job.yaml", "workers-job.yaml"])
def test_passwords_come_from_the_mounted_secret_only(job: str) -> None:
    pod = load(DISTRIBUTED / job)["spec"]["template"]["spec"]
    spec = container(job)
    configmap = load(DISTRIBUTED / "configmap.yaml")["metadata"]["name"]
    # Every variable the args use comes from the stores ConfigMap, none from a Secret or a
    # literal value (which `kubectl describe` and the pod spec would show).
    used = set(re.findall(r"\$\((\w+)\)", " ".join(spec["args"])))
    env = {e["name"]: e for e in spec["env"]}
    assert used == set(env)
    for name, entry in env.items():
        assert "value" not in entry, name
        assert entry["valueFrom"]["configMapKeyRef"] == {"name": configmap, "key": name}
        no_password_in(store_urls()[name])
    no_password_in(" ".join(spec["args"]))
    # Each URL's password_file is a key of the Secret, mounted read-only where the URL says.
    (secret,) = [v for v in pod["volumes"] if "secret" in v]
    assert secret["secret"]["secretName"] == SECRET
    (mount,) = [m for m in spec["volumeMounts"] if m["name"] == secret["name"]]
    assert mount["readOnly"] is True
    items = {Path(mount["mountPath"]) / i["path"]: i["key"] for i in secret["secret"]["items"]}
    for name in used:
        path = password_file(store_urls()[name])
        assert path in items, f"{name}'s password_file {path} is not mounted in {job}"
    assert set(items) == {password_file(store_urls()[name]) for name in used}
    # Readable by the pod's group (fsGroup), by nobody else.
    assert secret["secret"]["defaultMode"] == 0o440
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsUser"]


def test_workers_finish_in_flight_messages_before_they_are_killed() -> None:
    pod = load(DISTRIBUTED / "workers-job.yaml")["spec"]["template"]["spec"]
    grace = float(option(container("workers-job.yaml")["args"], "--grace"))
    assert pod["terminationGracePeriodSeconds"] >= grace + 10


@pytest.mark.parametrize("job", ["import-job.yaml", "workers-job.yaml"])
def test_usage_errors_fail_the_job_and_evictions_are_replaced(job: str) -> None:
    spec = load(DISTRIBUTED / job)["spec"]
    rules = spec["podFailurePolicy"]["rules"]
    fail_job = {v for r in rules if r["action"] == "FailJob" for v in r["onExitCodes"]["values"]}
    # State is in the shared stores, so a retry resumes: only a bad command line (click's
    # usage error) stops the Job at once, the rest counts towards backoffLimit.
    assert fail_job == {click.UsageError.exit_code}
    assert {"type": "DisruptionTarget"} in [
        c for r in rules if r["action"] == "Ignore" for c in r.get("onPodConditions", [])
    ]
    assert spec["backoffLimit"] >= 1
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    codes = {v for r in rules if "onExitCodes" in r for v in r["onExitCodes"]["values"]}
    assert EXIT_OK not in codes


def test_a_campaign_with_bounces_completes_the_workers_job() -> None:
    spec = load(DISTRIBUTED / "workers-job.yaml")["spec"]
    # One work queue: no completions; any worker exiting 0 completes the Job.
    assert "completions" not in spec
    assert spec["parallelism"] >= 2
    assert "--exit-zero-when-complete" in container("workers-job.yaml")["args"]
    rules = spec["podFailurePolicy"]["rules"]
    assert EXIT_UNDELIVERED not in {
        v for r in rules for v in r.get("onExitCodes", {}).get("values", [])
    }


def test_podmonitor_and_annotations_cover_the_workers() -> None:
    monitor = load(KUBERNETES / "podmonitor.yaml")
    template = load(DISTRIBUTED / "workers-job.yaml")["spec"]["template"]
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    )
    port = option(container("workers-job.yaml")["args"], "--metrics-port")
    assert template["metadata"]["annotations"]["prometheus.io/port"] == port
    ports = {p["name"]: p["containerPort"] for p in container("workers-job.yaml")["ports"]}
    assert ports[monitor["spec"]["podMetricsEndpoints"][0]["port"]] == int(port)


def test_the_campaign_configmap_is_the_one_the_jobs_mount() -> None:
    name = load(KUBERNETES / "configmap.yaml")["metadata"]["name"]
    for job in ("import-job.yaml", "workers-job.yaml"):
        volumes = load(DISTRIBUTED / job)["spec"]["template"]["spec"]["volumes"]
        assert {"name": "campaign", "configMap": {"name": name}} in volumes


# --- docker compose ---------------------------------------------------------------------------


def services() -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = load(COMPOSE)["services"]
    return result


def in_profile(profile: str) -> dict[str, dict[str, Any]]:
    """The services `docker compose --profile PROFILE up` starts."""
    return {
        name: service
        for name, service in services().items()
        if profile in service.get("profiles", [profile])
    }


def test_the_distributed_profile_runs_the_stores_three_workers_and_monitoring() -> None:
    running = in_profile("distributed")
    assert {"postgres", "valkey", "import", "worker", "prometheus", "grafana"} <= set(running)
    assert running["worker"]["deploy"]["replicas"] == 3
    assert running["postgres"]["image"].startswith("postgres:")
    assert running["valkey"]["image"].startswith("valkey/valkey:")
    assert "bulksend" not in running  # the demo campaign is the other profile
    assert "worker" not in in_profile("demo")
    # Every long-running service says when it is ready, and what depends on it waits for that.
    for name in ("postgres", "valkey", "sink", "worker"):
        assert running[name]["healthcheck"]["test"], name
    assert running["import"]["depends_on"]["postgres"] == {"condition": "service_healthy"}
    depends = running["worker"]["depends_on"]
    assert depends["import"] == {"condition": "service_completed_successfully"}
    assert depends["valkey"] == {"condition": "service_healthy"}


def test_the_workers_command_matches_the_kubernetes_one() -> None:
    command = services()["worker"]["command"]
    args = container("workers-job.yaml")["args"]
    assert command[0] == args[0] == "worker"
    for name in ("--metrics-port", "--metrics-host"):
        assert option(command, name) == option(args, name)
    assert "--exit-zero-when-complete" in command
    assert urlsplit(option(command, "--journal")).scheme == "postgresql"
    assert urlsplit(option(command, "--throttle")).scheme == "redis"
    assert services()["import"]["command"][0] == "import"


@pytest.mark.parametrize("name", ["postgres", "valkey", "import", "worker"])
def test_compose_passwords_come_from_secret_files(name: str) -> None:
    service = services()[name]
    secrets = set(service["secrets"])
    declared = load(COMPOSE)["secrets"]
    assert secrets <= set(declared)
    for secret in secrets:
        assert declared[secret]["file"].startswith("./secrets/")
    text = yaml.safe_dump({k: service.get(k) for k in ("command", "environment", "healthcheck")})
    no_password_in(text)
    for key, value in (service.get("environment") or {}).items():
        if "PASSWORD" in key:
            assert key.endswith("_FILE"), key
            assert str(value).startswith("/run/secrets/"), key
    # Each URL's password_file is one of this service's secrets.
    for arg in service.get("command") or []:
        if re.match(r"[a-z]+://", str(arg)):
            path = password_file(arg)
            assert path.parent == Path("/run/secrets")
            assert path.name in secrets, f"{name}: {path} is not one of its secrets"


def test_postgres_and_valkey_read_their_passwords_from_the_secret_files() -> None:
    postgres = services()["postgres"]
    assert postgres["environment"]["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres-password"
    assert "POSTGRES_PASSWORD" not in postgres["environment"]
    valkey = " ".join(services()["valkey"]["command"])
    assert "/run/secrets/valkey-password" in valkey
    assert "requirepass" in valkey  # into its config file, not its argv
    health = " ".join(services()["valkey"]["healthcheck"]["test"])
    assert "/run/secrets/valkey-password" in health
    assert "PONG" in health


def test_secret_files_are_kept_out_of_git() -> None:
    ignore = (DEPLOY / "secrets" / ".gitignore").read_text().split()
    assert ignore == ["*", "!.gitignore"]


def test_prometheus_scrapes_the_demo_or_every_worker() -> None:
    (job,) = load(PROMETHEUS_CONFIG)["scrape_configs"]
    assert job["job_name"] == "bulksend"  # BulksendMetricsDown selects on it
    (discovery,) = job["dns_sd_configs"]
    assert set(discovery["names"]) == {"bulksend", "worker"}
    assert discovery["type"] == "A"
    port = option(services()["worker"]["command"], "--metrics-port")
    assert discovery["port"] == int(port) == 9464
    for name in discovery["names"]:
        assert name in services()
    # Prometheus and Grafana run with either profile.
    assert "profiles" not in services()["prometheus"]
    assert "profiles" not in services()["grafana"]


def test_the_compose_campaign_loads(tmp_path: Path) -> None:
    from bulksend.config import load_campaign  # noqa: PLC0415

    folder = tmp_path / "campaign"
    shutil.copytree(DEPLOY / "campaign", folder)
    toml = (folder / "campaign.toml").read_text().replace("/home/bulksend/", f"{tmp_path}/")
    (folder / "campaign.toml").write_text(toml)
    config = load_campaign(folder / "campaign.toml", {})
    assert config.id == "compose-distributed"
    mount = next(v for v in services()["worker"]["volumes"] if v.startswith("./campaign:"))
    assert mount == "./campaign:/campaign:ro"


# --- against the CLI -----------------------------------------


def command_options(name: str) -> set[str]:
    from bulksend.cli import main  # noqa: PLC0415

    with click.Context(main) as ctx:
        command = main.get_command(ctx, name)
    assert command is not None, f"no `bulksend {name}` command"
    return {opt for param in command.params for opt in getattr(param, "opts", [])}


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("worker", container("workers-job.yaml")["args"]),
        ("worker", services()["worker"]["command"]),
        ("import", container("import-job.yaml")["args"]),
        ("import", services()["import"]["command"]),
    ],
    ids=["k8s-worker", "compose-worker", "k8s-import", "compose-import"],
)
def test_command_lines_use_options_the_command_has(name: str, args: list[str]) -> None:
    assert args[0] == name
    flags = {arg for arg in args if arg.startswith("--")}
    missing = flags - command_options(name)
    assert not missing, f"`bulksend {name}` lacks {sorted(missing)}"


def test_journal_urls_parse_as_the_postgresql_journal_does() -> None:
    from bulksend.journal.postgres_schema import parse_url  # noqa: PLC0415

    for url in (
        store_urls()["JOURNAL_URL"],
        option(services()["worker"]["command"], "--journal"),
        option(services()["import"]["command"], "--journal"),
    ):
        assert parse_url(url).password_file == password_file(url)
