"""The two-replica deployments (PostgreSQL state) agree with the daemon and with each other.

Kubernetes: ``deploy/kubernetes/replicas`` is a kustomize Component of the base; built with
it (``kubectl kustomize`` or ``kustomize``), the StatefulSet is gone and a Deployment of two
with a PodDisruptionBudget and an admin Service take its place; readiness keeps a standby
in rotation; the config loads with the daemon's own loader and names the Secret's keys.
systemd: the drop-in for two hosts verifies with ``systemd-analyze`` and turns the unit's
SQLite path into a database URL read from a credential.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read the Kubernetes manifests")

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "kubernetes"
SYSTEMD = ROOT / "deploy" / "systemd"
HEALTHZ = "/healthz"
DEFAULT_GRACE = 10.0


def _run(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False, **kwargs)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """The base kustomization with its commented ``components: [replicas]`` turned on, built
    from a copy (the base itself stays the single-replica setup)."""
    text = (K8S / "kustomization.yaml").read_text()
    enabled = re.sub(r"(?m)^#(components:|  - replicas)", r"\1", text)
    assert enabled != text, "kustomization.yaml no longer names the replicas component"
    copy = tmp_path_factory.mktemp("k8s") / "kubernetes"
    shutil.copytree(K8S, copy)
    (copy / "kustomization.yaml").write_text(enabled)
    kustomize = shutil.which("kustomize")
    if kustomize is not None:
        args = [kustomize, "build", str(copy)]
    else:
        kubectl = shutil.which("kubectl")
        if kubectl is None:
            pytest.skip("neither kustomize nor kubectl is installed on this machine")
        args = [kubectl, "kustomize", str(copy)]
    result = _run(args)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _config(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return tomllib.loads(_one(docs, "ConfigMap")["data"]["omics-watcher.toml"])


def _port_of(listen: str) -> int:
    return int(listen.rpartition(":")[2])


def _container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = _one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def _named_port(container: dict[str, Any], name: str) -> int:
    (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == name]
    return int(port)


def test_two_replicas_replace_the_statefulset(built: list[dict[str, Any]]) -> None:
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in built)
    assert kinds == [
        ("ConfigMap", "omics-watcher-config"),
        ("Deployment", "omics-watcher"),
        ("Namespace", "omics-watcher"),
        ("NetworkPolicy", "omics-watcher"),
        ("PodDisruptionBudget", "omics-watcher"),
        ("Service", "omics-watcher"),
        ("Service", "omics-watcher-admin"),
        ("ServiceAccount", "omics-watcher"),
    ]
    for doc in built:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "omics-watcher"
    deployment = _one(built, "Deployment")["spec"]
    assert deployment["replicas"] == 2
    assert deployment["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    pod = deployment["template"]["spec"]
    assert pod["containers"][0]["image"] == "omics-watcher:0.1.0"
    assert "volumeClaimTemplates" not in deployment
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert _container(built)["securityContext"]["readOnlyRootFilesystem"] is True
    grace = float(_config(built)["daemon"].get("shutdown_grace_seconds", DEFAULT_GRACE))
    assert pod["terminationGracePeriodSeconds"] > grace


def test_the_replica_manifests_validate_against_the_kubernetes_schema(
    built: list[dict[str, Any]], tmp_path: Path
) -> None:
    validate = shutil.which("kubernetes-validate") or shutil.which(
        "kubernetes-validate", path=str(Path(sys.executable).parent)
    )
    assert validate is not None, "kubernetes-validate comes with the test extras"
    manifests = tmp_path / "replicas.yaml"
    manifests.write_text(yaml.safe_dump_all(built))
    result = _run([validate, "--strict", "--quiet", str(manifests)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_pod_user_can_read_the_mounted_secret(built: list[dict[str, Any]]) -> None:
    """The kubelet writes a Secret volume's files owned by root, mode ``defaultMode``; only
    with ``fsGroup`` are they given that group and made group-readable. A non-root pod
    without it cannot read a 0400 ``database_url`` and exits 2 before it ever starts."""
    pod = _one(built, "Deployment")["spec"]["template"]["spec"]
    context = {**pod["securityContext"], **_container(built)["securityContext"]}
    assert context["runAsUser"] != 0
    (secret,) = [v["secret"] for v in pod["volumes"] if "secret" in v]
    mode = int(secret.get("defaultMode", 0o644))
    world_readable = bool(mode & 0o004)
    group_readable = pod["securityContext"].get("fsGroup") == context["runAsGroup"]
    assert world_readable or group_readable, "the secret files are root's alone"


def test_the_standby_stays_in_rotation_and_in_the_budget(built: list[dict[str, Any]]) -> None:
    """Readiness on /healthz: /readyz is 503 'standby' by design, and a pod that is not
    Ready would leave the admin Service and count as disrupted in the budget."""
    container = _container(built)
    config = _config(built)
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == HEALTHZ, probe
        assert _named_port(container, get["port"]) == _port_of(config["server"]["listen"])
    pod_labels = _one(built, "Deployment")["spec"]["template"]["metadata"]["labels"]
    budget = _one(built, "PodDisruptionBudget")["spec"]
    assert budget["minAvailable"] == 1
    assert budget["selector"]["matchLabels"].items() <= pod_labels.items()
    admin = _one(built, "Service", "omics-watcher-admin")["spec"]
    assert admin["selector"].items() <= pod_labels.items()
    (port,) = admin["ports"]
    assert _named_port(container, port["targetPort"]) == _port_of(config["server"]["admin_listen"])
    rules = _one(built, "NetworkPolicy")["spec"]["ingress"]
    assert sorted(p["port"] for rule in rules for p in rule["ports"]) == ["admin", "http"]


def test_the_config_loads_and_reads_the_url_from_the_secret(
    built: list[dict[str, Any]], tmp_path: Path
) -> None:
    import watcher.config as config_mod
    from watcher.options import state_options

    text = _one(built, "ConfigMap")["data"]["omics-watcher.toml"]
    config = tomllib.loads(text)
    assert "path" not in config["state"]
    example = yaml.safe_load((K8S / "secret.example.yaml").read_text())["stringData"]
    mounts = {m["mountPath"]: m["name"] for m in _container(built)["volumeMounts"]}
    volumes = {
        v["name"]: v for v in _one(built, "Deployment")["spec"]["template"]["spec"]["volumes"]
    }
    url = "postgresql://omics_watcher:pw@db.example:5432/omics_watcher?sslmode=verify-full"
    for key in ("url_file",):
        file_path = PurePosixPath(config["state"][key])
        assert "secret" in volumes[mounts[str(file_path.parent)]]
        assert file_path.name in example
        assert file_path.name == "database_url"
    # Every *_file, with the Secret's files at a local path, loads with the daemon's loader.
    for name in re.findall(r'"(/etc/omics-watcher/secrets/\w+)"', text):
        local = tmp_path / PurePosixPath(name).name
        local.write_text(
            url if local.name == "database_url" else "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
        )
        text = text.replace(f'"{name}"', f'"{local}"')
    config_file = tmp_path / "omics-watcher.toml"
    config_file.write_text(text)
    state = state_options(config_mod.load_settings(str(config_file), environ={}))
    assert state.url == url
    assert state.path is None
    assert state.lease_seconds == 15


# -- systemd -------------------------------------------------------------------------------------


def _entries(path: Path) -> list[tuple[str, str]]:
    found = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found.append((key, value))
    return found


def test_the_drop_in_moves_the_state_to_the_database() -> None:
    unit_env = [v for k, v in _entries(SYSTEMD / "omics-watcher.service") if k == "Environment"]
    drop_in = _entries(SYSTEMD / "postgresql.conf")
    unset = [v for k, v in drop_in if k == "UnsetEnvironment"]
    assert unset == ["OMICS_WATCHER_STATE__PATH"]
    assert any(v.startswith("OMICS_WATCHER_STATE__PATH=") for v in unit_env)  # taken away
    credentials = dict(v.split(":", 1) for k, v in drop_in if k == "LoadCredential")
    env = dict(
        item.split("=", 1) for k, v in drop_in if k == "Environment" for item in shlex.split(v)
    )
    assert env == {"OMICS_WATCHER_STATE__URL_FILE": "%d/database_url"}
    assert credentials == {"database_url": "/etc/omics-watcher/database_url"}


def test_systemd_analyze_verify_with_the_drop_in(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed on this machine")
    unit = (SYSTEMD / "omics-watcher.service").read_text()
    (tmp_path / "omics-watcher.service").write_text(
        unit.replace("/usr/local/bin/omics-watcher", "/bin/true")
    )
    drop_ins = tmp_path / "omics-watcher.service.d"
    drop_ins.mkdir()
    shutil.copy(SYSTEMD / "postgresql.conf", drop_ins)
    # The unit path lookup finds the drop-in beside the copy (checked: an unknown key in it
    # is reported, so it is read).
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{tmp_path}:"}
    result = _run([analyze, "verify", "--man=no", str(tmp_path / "omics-watcher.service")], env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""
    (drop_ins / "zz-check.conf").write_text("[Service]\nNotAKey=1\n")
    result = _run([analyze, "verify", "--man=no", str(tmp_path / "omics-watcher.service")], env=env)
    assert "NotAKey" in result.stderr
