"""Running the app under the production WSGI server (gunicorn) or Flask's development server."""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from .config import Config
from .logs import configure_logging


def default_workers() -> int:
    """Workers sized to the cores: the token endpoint is CPU-bound (signing)."""
    return max(2, (os.cpu_count() or 1) * 2)


def _prepare_multiprocess_metrics() -> str:
    """A fresh directory for prometheus_client's per-worker files; must exist before it is imported."""
    directory = tempfile.mkdtemp(prefix="tokendealer-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    return directory


def run(config: Config, host: str, port: int, workers: int | None, dev: bool) -> None:
    """Serve until interrupted."""
    configure_logging(config.log_json)
    if dev:
        from .app import create_app  # noqa: PLC0415

        create_app(config).run(host=host, port=port, debug=False, threaded=True)
        return
    metrics_dir = _prepare_multiprocess_metrics()
    try:
        _gunicorn(config, host, port, workers or default_workers())
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _gunicorn(config: Config, host: str, port: int, workers: int) -> None:
    from gunicorn.app.base import BaseApplication  # noqa: PLC0415

    def child_exit(_server: Any, worker: Any) -> None:
        from prometheus_client import multiprocess  # noqa: PLC0415

        multiprocess.mark_process_dead(worker.pid)

    class Application(BaseApplication):
        def load_config(self) -> None:
            settings = {
                "bind": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
                "workers": workers,
                "worker_class": "sync",
                "timeout": 30,
                "graceful_timeout": 30,
                "keepalive": 5,
                "accesslog": "-",
                # The path without its query string: a misplaced credential in a URL never reaches the log.
                "access_log_format": '%(h)s "%(m)s %(U)s" %(s)s %(b)s %(L)ss %({x-request-id}o)s',
                "errorlog": "-",
                "child_exit": child_exit,
                "proc_name": "tokendealer",
            }
            for key, value in settings.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            from .app import create_app  # noqa: PLC0415

            return create_app(config)

    Application().run()
