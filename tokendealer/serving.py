"""Running the app under the production server (granian) or Flask's development server.

granian was chosen by measurement (benchmarks/servers.py, benchmarks/RESULTS.md): its Rust HTTP layer
served the token endpoint at 2.2x gunicorn gthread. Its RSGI interface is used (benchmarks/RESULTS.md,
"Serving core"): each worker is one event loop on which `edge.Edge` reads every body with a deadline, so a
slow or stalled client holds no thread (granian's WSGI interface reads a body in a blocking thread with no
deadline, whatever the thread count). uvloop measured 1.2-1.4x asyncio's loop; granian's Rust tasks were
slower. One worker per core. SIGHUP respawns the workers (graceful restart); a crashed worker is respawned.

With TOKENDEALER_ADMIN_LISTEN a second granian master (one worker) serves the same application on that
address with only `/admin/` (and the health probes) reachable, while the public listener answers 404 under
`/admin/`: the admin API can then be firewalled apart. The supervisor runs both masters and stops both
when either exits.

Shutdown always finishes: granian's master runs in its own session, so a signal to `tokendealer serve`'s
process group (Ctrl-C, `kill -- -PGID`, systemd's KillMode=control-group) reaches only this supervising
process, which asks the master for a graceful stop (in-flight requests answered, logs flushed) and kills
the master's whole session if it has not exited within `STOP_GRACE` seconds.
"""

from __future__ import annotations

import ctypes
import gc
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

from .config import Config
from .logs import AccessLog, LineBuffer, configure_logging

CONFIG_FILE_ENV = "TOKENDEALER_SERVE_CONFIG_FILE"
WORKERS_ENV = "TOKENDEALER_SERVE_WORKERS"
# Seconds granian's master has to stop its workers gracefully; the supervisor kills what is left after STOP_GRACE.
WORKERS_KILL_TIMEOUT = 7
STOP_GRACE = 9.0
PR_SET_PDEATHSIG = 1


def default_workers() -> int:
    """One worker per core (at least two, so one can restart while the other serves): the token endpoint is
    CPU-bound (signing), with short waits on the database."""
    return max(2, os.cpu_count() or 1)


def worker_app() -> Any:
    """Application factory each public worker calls: the same configuration the `serve` command validated,
    served through the edge (bodies read with a deadline), with the access log on standard output."""
    return _worker(admin=False)


def admin_worker_app() -> Any:
    """Application factory of the admin listener's worker (TOKENDEALER_ADMIN_LISTEN)."""
    return _worker(admin=True)


def _worker(admin: bool) -> Any:
    from .app import DIRECT_TOKEN_PATH, create_app  # noqa: PLC0415 (imported in the worker, after the metrics set-up)
    from .edge import Edge  # noqa: PLC0415

    config = Config.load(config_file=os.environ.get(CONFIG_FILE_ENV) or None)
    configure_logging(config.log_json)  # granian's master is a new interpreter: `run`'s set-up is not inherited
    listener = "admin" if admin else "public" if config.admin_address else "all"
    processes = 1 if admin else int(os.environ.get(WORKERS_ENV, "1"))
    app = create_app(config, processes=processes, serving=True, listener=listener)
    services = app.extensions["tokendealer"]
    # What start-up built lives as long as the worker: moved out of the collector's reach, so a full collection
    # (set off by per-request garbage such as new workload tokens) scans the requests' objects, not the whole
    # application (~40-60 ms each before).
    gc.collect()
    gc.freeze()
    return Edge(
        app,
        AccessLog(LineBuffer(sys.stdout.fileno())),
        body_timeout=config.body_timeout,
        max_body=config.max_body_bytes,
        inline_token_path=not config.ratelimit,
        on_close=services.close,
        token_path=app.extensions.get(DIRECT_TOKEN_PATH),
    )


def run(config: Config, host: str, port: int, workers: int | None, dev: bool, config_file: str | None = None) -> None:
    """Serve until interrupted."""
    configure_logging(config.log_json)
    if dev:
        from .app import create_app  # noqa: PLC0415

        # Flask's server has one listener: with TOKENDEALER_ADMIN_LISTEN the admin API is then not served at all.
        create_app(config, listener="public" if config.admin_address else "all").run(host=host, port=port, debug=False, threaded=True)
        return
    # prometheus_client must see this directory before it is first imported, in every worker.
    metrics_dir = tempfile.mkdtemp(prefix="tokendealer-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    if config_file:
        os.environ[CONFIG_FILE_ENV] = os.path.abspath(config_file)
    workers = workers or default_workers()
    os.environ[WORKERS_ENV] = str(workers)
    try:
        _granian(host, port, workers, config.admin_address)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _master(host: str, port: int, workers: int, target: str) -> subprocess.Popen:
    """granian's master for `target`, in its own session."""
    code = f"from tokendealer.serving import granian_master; granian_master({host!r}, {port}, {workers}, {target!r})"
    return subprocess.Popen([sys.executable, "-c", code], start_new_session=True, preexec_fn=_stop_with_parent)


def _granian(host: str, port: int, workers: int, admin: tuple[str, int] | None = None) -> None:
    """Run granian's master (and the admin listener's, when `admin` is an address) each in its own session,
    and supervise them until one exits (see the module docstring)."""
    masters = [_master(host, port, workers, "worker_app")]
    if admin:
        masters.append(_master(admin[0], admin[1], 1, "admin_worker_app"))
    asked: list[float] = []  # when a signal asked to stop
    lost: list[subprocess.Popen] = []  # a master that exited unasked (then the other is stopped too)

    def stop_all() -> None:
        for master in masters:
            _signal(master, signal.SIGTERM)

    def kill_all() -> None:
        for master in masters:
            _kill_session(master)

    def stop(signum: int, frame: Any) -> None:
        if asked:  # a second Ctrl-C: no more waiting
            kill_all()
            return
        asked.append(time.monotonic())
        stop_all()

    def reload(signum: int, frame: Any) -> None:
        for master in masters:
            _signal(master, signal.SIGHUP)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, reload)
    stopping_since: float | None = None
    while any(master.poll() is None for master in masters):
        if not asked and not lost:
            lost = [master for master in masters if master.poll() is not None]
            if lost:  # one listener is gone: the instance stops rather than serve half
                stop_all()
        if stopping_since is None and (asked or lost):
            stopping_since = asked[0] if asked else time.monotonic()
        time.sleep(0.2)
        if stopping_since is not None and time.monotonic() - stopping_since > STOP_GRACE:
            kill_all()
    kill_all()  # workers a master may have left behind
    if not asked and lost:
        code = lost[0].returncode
        if code not in (0, -signal.SIGTERM):
            raise SystemExit(code)
        if len(masters) > 1:
            raise SystemExit(1)  # half the instance ended on its own


def granian_master(host: str, port: int, workers: int, target: str = "worker_app") -> None:
    """granian's master process: forks the workers, respawns a crashed one, restarts them on SIGHUP."""
    from granian import Granian  # noqa: PLC0415
    from granian.constants import Interfaces, Loops  # noqa: PLC0415
    from granian.http import HTTP1Settings  # noqa: PLC0415

    Granian(
        f"tokendealer.serving:{target}",
        address=host,
        port=port,
        interface=Interfaces.RSGI,
        loop=Loops.uvloop,
        websockets=False,
        workers=workers,
        factory=True,
        http1_settings=HTTP1Settings(header_read_timeout=10_000, keep_alive=True),
        log_access=False,
        respawn_failed_workers=True,
        workers_kill_timeout=WORKERS_KILL_TIMEOUT,
    ).serve()


def _stop_with_parent() -> None:
    """In the master, before exec: SIGTERM when the supervisor dies, even by SIGKILL (Linux)."""
    try:
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def _signal(master: subprocess.Popen, signum: int) -> None:
    try:
        os.kill(master.pid, signum)
    except ProcessLookupError:
        pass


def _kill_session(master: subprocess.Popen) -> None:
    try:
        os.killpg(master.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
