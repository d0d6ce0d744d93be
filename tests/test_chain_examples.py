"""The three-service chain of the examples for real: `tokendealer serve`, B and C under granian and A's
caller, each its own process on loopback, as README's "Calls on behalf of a caller" runs them."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from .conftest import free_port, run_cli

pytestmark = [pytest.mark.live]

ROOT = Path(__file__).resolve().parent.parent
GRANIAN = str(Path(sys.executable).with_name("granian"))


class Service:
    """One example service under granian on a free loopback port."""

    def __init__(self, interface: str, target: str, env: dict[str, str], log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        self._log = open(log, "wb")
        command = [GRANIAN, "--interface", interface, "--factory", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        self.process = subprocess.Popen([*command, target], cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{target} exited: {log.read_text()[-2000:]}")
            try:
                requests.get(self.url + "/", timeout=1)
                return
            except requests.RequestException:
                time.sleep(0.1)
        raise RuntimeError(f"{target} did not start: {log.read_text()[-2000:]}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self._log.close()


@pytest.mark.parametrize(("interface", "module"), [("wsgi", "examples.chain_service"), ("asgi", "examples.fastapi_chain_service")])
def test_three_service_chain_c_sees_a_as_subject_and_b_as_actor(live_factory, tmp_path, interface, module):
    server = live_factory(workers=1)
    secrets = {}
    for name, options in {
        "svc-a": ["--scope", "orders:read invoices:read", "--audience", "https://b.example"],
        "svc-b": ["--audience", "https://c.example", "--serves", "https://b.example", "--exchange-audience", "https://c.example"],
    }.items():
        created = run_cli("client", "create", name, *options, env=server.env)
        assert created.returncode == 0, created.stderr
        secrets[name] = json.loads(created.stdout)["client_secret"]
    base = {k: v for k, v in server.env.items() if not k.startswith("TOKENDEALER_")} | {"TOKENDEALER_URL": server.url}
    services = []
    try:
        c = Service(interface, f"{module}:service_c", base, tmp_path / "service-c.log")
        services.append(c)
        b_env = base | {"TOKENDEALER_CLIENT_ID": "svc-b", "TOKENDEALER_CLIENT_SECRET": secrets["svc-b"], "C_URL": c.url}
        b = Service(interface, f"{module}:service_b", b_env, tmp_path / "service-b.log")
        services.append(b)
        a_env = base | {"TOKENDEALER_CLIENT_ID": "svc-a", "TOKENDEALER_CLIENT_SECRET": secrets["svc-a"]}
        result = subprocess.run(
            [sys.executable, "examples/chain_caller.py", b.url], cwd=ROOT, env=a_env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr[-3000:] + b.log_path.read_text()[-2000:] + c.log_path.read_text()[-2000:]
        answer = json.loads(result.stdout)
        assert answer["caller"] == "svc-a"
        seen_by_c = answer["invoices"]
        assert seen_by_c["sub"] == "svc-a"
        assert seen_by_c["act"] == {"sub": "svc-b"}
        assert seen_by_c["actors"] == ["svc-b"]
        # A's own token (meant for B) is refused at C.
        a_token = requests.post(
            server.url + "/oauth/token", data={"grant_type": "client_credentials"}, auth=("svc-a", secrets["svc-a"]), timeout=5
        ).json()["access_token"]
        assert requests.get(c.url + "/invoices", headers={"Authorization": f"Bearer {a_token}"}, timeout=5).status_code == 401
        server.stop()  # the audit log is buffered (flushed each second and at shutdown)
        audit = (Path(server.env["TOKENDEALER_AUDIT_LOG"])).read_text()
        exchanged = [json.loads(line) for line in audit.splitlines() if '"token.exchanged"' in line]
        assert [(e["subject"], e["actors"], e["audience"]) for e in exchanged] == [("svc-a", ["svc-b"], ["https://c.example"])]
    finally:
        for service in services:
            service.stop()
