"""deploy/: the Kubernetes manifests validate against the Kubernetes API schemas (kubernetes-validate), hold the
security settings the README promises, and carry a valid apply file and configuration; the Containerfile's
image builds and serves (slow tier, podman)."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import resource
import secrets
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import requests
import yaml

from tokendealer import manifest
from tokendealer.config import PREFIX, Config

from .conftest import debian_tool, free_port

ROOT = Path(__file__).resolve().parent.parent
KUBERNETES = ROOT / "deploy" / "kubernetes"
BASE = KUBERNETES / "base"
KUSTOMIZATIONS = [BASE, KUBERNETES / "overlays" / "example"]
# The newest API schemas kubernetes-validate ships, and an older release still in wide use.
VERSIONS = [kubernetes_validate.latest_version(), "1.29.0"]


def documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


@functools.cache
def render(kustomization: Path) -> list[dict[str, Any]]:
    """The resources a kustomization makes: `kubectl kustomize` or `kustomize build` where one is installed,
    else the resource files it lists, read as they are."""
    for command in (["kubectl", "kustomize"], ["kustomize", "build"]):
        if shutil.which(command[0]):
            result = subprocess.run([*command, str(kustomization)], capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, result.stderr
            return documents(result.stdout)
    listed = yaml.safe_load((kustomization / "kustomization.yaml").read_text())["resources"]
    out: list[dict[str, Any]] = []
    for entry in listed:
        path = kustomization / entry
        out += render(path) if path.is_dir() else documents(path.read_text())
    return out


def pod_specs(resources: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every pod template: kind/name -> its pod spec."""
    specs = {}
    for r in resources:
        name = f"{r['kind']}/{r['metadata']['name']}"
        if r["kind"] in ("Deployment", "Job"):
            specs[name] = r["spec"]["template"]["spec"]
        elif r["kind"] == "CronJob":
            specs[name] = r["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return specs


def by_name(resources: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [r for r in resources if r["kind"] == kind and r["metadata"]["name"] == name]
    return found


# The overlay against the newest schemas only: it changes names, not shapes.
@pytest.mark.parametrize(
    ("kustomization", "version"), [(BASE, v) for v in VERSIONS] + [(KUSTOMIZATIONS[1], VERSIONS[0])], ids=lambda v: getattr(v, "name", v)
)
def test_every_rendered_resource_validates(kustomization, version):
    resources = render(kustomization)
    kinds = sorted(r["kind"] for r in resources)
    assert {"Deployment", "Service", "ServiceAccount", "ConfigMap", "Job", "CronJob", "PodDisruptionBudget", "NetworkPolicy"} <= set(kinds)
    for item in resources:
        kubernetes_validate.validate(item, version, strict=True)


def test_the_kustomization_lists_every_resource_file():
    """Every file is rendered (and so validated above); where no kustomize renders, each file is validated here."""
    listed = yaml.safe_load((BASE / "kustomization.yaml").read_text())["resources"]
    files = sorted(p.name for p in BASE.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == files
    if shutil.which("kubectl") or shutil.which("kustomize"):
        return
    for name in files:
        for item in documents((BASE / name).read_text()):
            kubernetes_validate.validate(item, kubernetes_validate.latest_version(), strict=True)


def test_every_pod_runs_restricted():
    specs = pod_specs(render(BASE))
    assert sorted(specs) == [
        "CronJob/tokendealer-rotate",
        "Deployment/tokendealer",
        "Job/tokendealer-apply",
        "Job/tokendealer-db-upgrade",
    ]
    for name, spec in specs.items():
        context = spec["securityContext"]
        assert context["runAsNonRoot"] is True and context["runAsUser"] != 0, name
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert spec["automountServiceAccountToken"] is False, name
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["key-encryption-key"]["secret"]["defaultMode"] == 0o400, name
        for container in spec.get("initContainers", []) + spec["containers"]:
            where = f"{name} {container['name']}"
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["capabilities"] == {"drop": ["ALL"]}, where
            assert container["resources"]["requests"] and container["resources"]["limits"]["memory"], where
            assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"], where  # the only writable place
            env = {e["name"]: e for e in container.get("env", [])}
            assert env["TOKENDEALER_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "tokendealer", where


def test_server_probes_replicas_and_disruption_budget():
    resources = render(BASE)
    deployment = by_name(resources, "Deployment", "tokendealer")
    assert deployment["spec"]["replicas"] >= 2
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert "limits" not in container["resources"] or "cpu" not in container["resources"]["limits"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    budget = by_name(resources, "PodDisruptionBudget", "tokendealer")
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = by_name(resources, "Service", "tokendealer")
    assert service["spec"]["selector"].items() <= labels.items()
    ingress = by_name(resources, "NetworkPolicy", "tokendealer-server-ingress")
    assert ingress["spec"]["ingress"] == [{"ports": [{"port": 5000, "protocol": "TCP"}]}]
    egress = by_name(resources, "NetworkPolicy", "tokendealer-egress")
    ports = sorted(p["port"] for rule in egress["spec"]["egress"] for p in rule["ports"])
    assert ports == [53, 53, 443, 5432, 6379]
    assert egress["spec"]["policyTypes"] == ["Ingress", "Egress"] and "ingress" not in egress["spec"]


def test_jobs_run_the_commands_in_order():
    specs = pod_specs(render(BASE))

    def args(name: str) -> list[list[str]]:
        spec = specs[name]
        return [c["args"] for c in spec.get("initContainers", []) + spec["containers"]]

    assert args("Job/tokendealer-db-upgrade") == [["db", "upgrade"], ["keys", "init"]]
    assert args("CronJob/tokendealer-rotate") == [["keys", "rotate"], ["keys", "prune"]]
    assert args("Job/tokendealer-apply") == [["apply", "/etc/tokendealer/apply/clients.yaml", "--no-new-secrets"]]


def test_the_configuration_is_valid_for_the_server(tmp_path):
    config_map = by_name(render(BASE), "ConfigMap", "tokendealer-config")["data"]
    names = {f.name for f in dataclasses.fields(Config)}
    for key in config_map:
        assert key.startswith(PREFIX) and key[len(PREFIX) :].lower() in names, key
    kek = tmp_path / "key-encryption-key"
    kek.write_text(secrets.token_urlsafe(32))
    environ = {**config_map, "TOKENDEALER_KEY_ENCRYPTION_KEY_FILE": str(kek), "TOKENDEALER_DATABASE_URL": "postgresql://td@db/td"}
    config = Config.load(environ=environ)
    assert config.keyring == "database" and config.ratelimit_storage.startswith("redis://")


def test_the_apply_config_map_is_a_valid_apply_file():
    data = by_name(render(BASE), "ConfigMap", "tokendealer-apply")["data"]
    parsed = manifest.parse(yaml.safe_load(data["clients.yaml"]), "https://auth.example.com")
    assert [c.client_id for c in parsed.clients] == ["billing", "reports"]
    assert all(c.auth_method == "federated" for c in parsed.clients)  # --no-new-secrets: none gets a secret


def test_the_containerfile_runs_tokendealer_as_a_non_root_user():
    text = (ROOT / "deploy" / "Containerfile").read_text()
    lines = [line.strip() for line in text.splitlines()]
    assert "USER 10001:10001" in lines
    assert 'ENTRYPOINT ["tokendealer"]' in lines
    assert any(line.startswith('CMD ["serve"') for line in lines)
    assert "/healthz" in text[text.index("HEALTHCHECK") :]


# ---- the image (slow: podman, a Debian base made with debootstrap where no registry is reachable) ---------------

BASE_IMAGE = "localhost/tokendealer-test-base:bookworm"
IMAGE = "localhost/tokendealer-test:latest"


# This machine's podman needs runc (crun refuses cgroups in hybrid mode) and limits no higher than ours (it may not
# raise them: no CAP_SYS_RESOURCE); both are harmless elsewhere.
PODMAN = ["podman", "--runtime", "runc"]
NOFILE = resource.getrlimit(resource.RLIMIT_NOFILE)
LIMITS = ["--ulimit", f"nofile={NOFILE[0]}:{NOFILE[0]}", "--ulimit", "nproc=4096:4096"]


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        pytest.fail(f"podman {' '.join(args[:2])} failed: {result.stderr.strip()[-1500:]}", pytrace=False)
    return result


def base_image(tmp_path: Path) -> str:
    """The slim image's stand-in: Debian bookworm's own Python 3.11 on a minimal root (debootstrap reaches only
    the Debian mirror), made once per machine and kept as a podman image."""
    if podman("image", "exists", BASE_IMAGE, check=False).returncode == 0:
        return BASE_IMAGE
    debootstrap = debian_tool("debootstrap", "debootstrap")
    root = tmp_path / "rootfs"
    made = subprocess.run(
        [debootstrap, "--variant=minbase", "--include=python3,python3-venv", "bookworm", str(root), "http://deb.debian.org/debian"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if made.returncode != 0:
        pytest.fail(f"debootstrap failed: {made.stdout[-1000:]} {made.stderr[-1000:]}", pytrace=False)
    # The machine's CA bundle: where HTTPS goes through an inspecting proxy, pip in the build trusts what we trust.
    shutil.copyfile("/etc/ssl/certs/ca-certificates.crt", root / "etc" / "ssl" / "certs" / "ca-certificates.crt")
    tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
    imported = subprocess.run([*PODMAN, "import", "-", BASE_IMAGE], stdin=tar.stdout, capture_output=True, text=True, timeout=300)
    tar.wait(60)
    assert imported.returncode == 0, imported.stderr
    return BASE_IMAGE


@pytest.mark.slow
@pytest.mark.live
def test_the_image_builds_and_serves_read_only_as_non_root(tmp_path):
    debian_tool("podman", "podman")
    debian_tool("runc", "runc")
    base = base_image(tmp_path)
    # The build reaches the package index for the server's dependencies (pip), nothing else.
    built = podman(
        "build",
        "--format",
        "docker",  # the OCI image format has no HEALTHCHECK
        *LIMITS,
        "--network",
        "host",
        "--build-arg",
        f"BASE={base}",
        "-f",
        str(ROOT / "deploy" / "Containerfile"),
        "-t",
        IMAGE,
        str(ROOT),
        timeout=900,
    )
    assert built.returncode == 0
    inspected = json.loads(podman("image", "inspect", IMAGE).stdout)[0]
    assert inspected["Config"]["User"] == "10001:10001"
    assert inspected["Config"]["Entrypoint"] == ["tokendealer"]
    health = inspected.get("Healthcheck") or inspected["Config"].get("Healthcheck")  # where podman puts it varies by version
    assert "/healthz" in " ".join(health["Test"])

    data = tmp_path / "data"
    data.mkdir()
    os.chown(data, 10001, 10001)
    common = ["--rm", *LIMITS, "--read-only", "--read-only-tmpfs=false", "--tmpfs", "/tmp:rw,size=64m,mode=1777", "--cap-drop", "ALL"]
    common += ["--security-opt", "no-new-privileges", "-v", f"{data}:/data:Z"]
    common += ["-e", "TOKENDEALER_DATABASE_URL=sqlite:////data/td.db", "-e", "TOKENDEALER_KEYS_DIR=/data/keys"]
    assert podman("run", *common, "--network", "none", IMAGE, "init").returncode == 0
    whoami = podman("run", *common, "--network", "none", "--entrypoint", "id", IMAGE, "-u").stdout.strip()
    assert whoami == "10001"

    port = free_port()
    name = f"tokendealer-test-{secrets.token_hex(4)}"
    podman("run", "-d", "--name", name, *common, "--network", "host", IMAGE, "serve", "--host", "127.0.0.1", "--port", str(port))
    try:
        deadline = time.monotonic() + 60
        status = None
        while time.monotonic() < deadline and status != 200:
            try:
                status = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code
            except requests.RequestException:
                time.sleep(0.5)
        assert status == 200, podman("logs", name, check=False).stdout[-2000:]
        assert requests.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200
        jwks = requests.get(f"http://127.0.0.1:{port}/.well-known/jwks.json", timeout=5).json()
        assert len(jwks["keys"]) == 2
    finally:
        podman("stop", "-t", "10", name, check=False)

    # The image as shipped (its CMD, port 5000 in a network namespace of its own): its HEALTHCHECK passes. A name of
    # its own: `--rm` removes the stopped container above in the background, so its name may not be free yet.
    name = f"tokendealer-test-{secrets.token_hex(4)}"
    podman("run", "-d", "--name", name, *common, "--network", "none", IMAGE)
    try:
        deadline = time.monotonic() + 60
        healthy = podman("healthcheck", "run", name, check=False)
        while healthy.returncode != 0 and time.monotonic() < deadline:
            time.sleep(1)
            healthy = podman("healthcheck", "run", name, check=False)
        assert healthy.returncode == 0, podman("logs", name, check=False).stdout[-2000:]
    finally:
        podman("stop", "-t", "10", name, check=False)
