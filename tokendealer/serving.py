"""Running the app under the production WSGI server (granian) or Flask's development server.

granian was chosen by measurement (benchmarks/servers.py, benchmarks/RESULTS.md): on two cores it served
the token endpoint at 2.2x gunicorn gthread and 2.7x gunicorn sync with a lower p99, thanks to its Rust
HTTP layer and keep-alive. One worker per core with one blocking thread each gave the lowest p99 at close
to the most requests (more workers or threads add context switches to CPU-bound signing and push p99
past 40 ms). It keeps graceful restarts (SIGHUP respawns the workers), timeouts and an access log.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from typing import Any

from .config import Config
from .logs import AccessLog, configure_logging

CONFIG_FILE_ENV = "TOKENDEALER_SERVE_CONFIG_FILE"
WORKERS_ENV = "TOKENDEALER_SERVE_WORKERS"


def default_workers() -> int:
    """One worker per core (at least two, so one can restart while the other serves): the token endpoint is
    CPU-bound (signing), with short waits on the database."""
    return max(2, os.cpu_count() or 1)


def worker_app() -> Any:
    """Application factory each worker calls: the same configuration the `serve` command validated, with
    the access log on standard output (where granian writes its own lines)."""
    from .app import create_app  # noqa: PLC0415 (imported in the worker, after the metrics set-up)

    config = Config.load(config_file=os.environ.get(CONFIG_FILE_ENV) or None)
    return AccessLog(create_app(config, processes=int(os.environ.get(WORKERS_ENV, "1"))), sys.stdout.fileno())


def run(config: Config, host: str, port: int, workers: int | None, dev: bool, config_file: str | None = None) -> None:
    """Serve until interrupted."""
    configure_logging(config.log_json)
    if dev:
        from .app import create_app  # noqa: PLC0415

        create_app(config).run(host=host, port=port, debug=False, threaded=True)
        return
    # prometheus_client must see this directory before it is first imported, in every worker.
    metrics_dir = tempfile.mkdtemp(prefix="tokendealer-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    if config_file:
        os.environ[CONFIG_FILE_ENV] = os.path.abspath(config_file)
    workers = workers or default_workers()
    os.environ[WORKERS_ENV] = str(workers)
    try:
        _granian(host, port, workers)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _granian(host: str, port: int, workers: int) -> None:
    from granian import Granian  # noqa: PLC0415
    from granian.constants import Interfaces  # noqa: PLC0415
    from granian.http import HTTP1Settings  # noqa: PLC0415

    Granian(
        "tokendealer.serving:worker_app",
        address=host,
        port=port,
        interface=Interfaces.WSGI,
        websockets=False,
        workers=workers,
        blocking_threads=1,
        factory=True,
        http1_settings=HTTP1Settings(header_read_timeout=30_000, keep_alive=True),
        log_access=False,
        respawn_failed_workers=True,
        workers_kill_timeout=30,
    ).serve()
