"""The HTTP server behind ``warmcache serve``.

``waitress`` (the default, a dependency) serves from this process: one
thread accepts and parses connections (asyncore), ``service.http_threads``
worker threads run the app, requests over ``service.http_max_body_bytes``
get 413 before their body is read, idle keep-alive connections close after
``service.http_idle_timeout_s``, and the service's background threads (views,
elections, builds, health) run beside them in the same process.
``bench/acquire.py --server`` compares it with the alternatives kept here
for that purpose only: ``gunicorn`` (its gthread worker, one worker) and
``granian`` (Rust HTTP, WSGI on blocking threads, one worker), each used
only when installed, and Werkzeug's development server (``werkzeug``:
unbounded threads, no limits). Measured (README, Benchmarks), granian
served 10-20% more acquisitions than waitress and gunicorn about as many;
but both run the app in a worker process under a supervisor, so a SIGKILL
or SIGSTOP of ``warmcache serve`` (how operators and the crash tests stop a
leader) left the worker serving and leading. waitress keeps one instance
in one process.

TLS is not terminated here: run the instance behind a TLS proxy (nginx,
HAProxy, Envoy) on the same host, see the README's production section.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from warmcache.config import Config, load_config
from warmcache.errors import ConfigError

log = logging.getLogger(__name__)
CONFIG_ENV = "WARMCACHE_SERVE_CONFIG"  # how external servers' workers find the config


def _service_app(config: Config) -> tuple[Any, Any]:
    from warmcache.bootstrap import build
    from warmcache.web import create_app
    from warmcache.web.auth import Authenticator

    service = build(config)
    auth = Authenticator(config.auth)
    if not auth.enabled:
        logging.getLogger("warmcache").warning(
            "no [[auth.tokens]] configured: the API is open to anyone who can reach it"
        )
    return service, create_app(service, auth)


def app_factory() -> Any:
    """A WSGI app for servers that import one in their own worker process
    (gunicorn, granian): builds and starts the service there."""
    path = os.environ.get(CONFIG_ENV)
    if not path:
        raise ConfigError([f"{CONFIG_ENV}: the config file of `warmcache serve` is not set"])
    service, app = _service_app(load_config(path))
    service.start()
    atexit.register(service.close)
    return app


def _waitress(config: Config, config_path: str) -> None:
    from warmcache.web.waitress_glue import create_server

    cfg = config.service
    service, app = _service_app(config)
    server = create_server(app, cfg)

    def _stop(_sig: int, _frame: object) -> None:
        raise SystemExit(0)  # waitress's loop ends on it and stops its threads

    signal.signal(signal.SIGTERM, _stop)
    service.start()
    log.info(
        "%s serving on http://%s:%d (waitress, %d threads)",
        cfg.node,
        cfg.listen_host,
        cfg.listen_port,
        cfg.http_threads,
    )
    try:
        server.run()
    finally:
        service.close()


def _werkzeug(config: Config, config_path: str) -> None:
    from werkzeug.serving import make_server

    cfg = config.service
    service, app = _service_app(config)
    server = make_server(cfg.listen_host, cfg.listen_port, app, threaded=True)

    def _stop(_sig: int, _frame: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    service.start()
    try:
        server.serve_forever()
    finally:
        service.close()


def _gunicorn(config: Config, config_path: str) -> None:
    try:
        from gunicorn.app.base import BaseApplication
    except ImportError as exc:
        raise ConfigError(["--server gunicorn: pip install gunicorn"]) from exc

    cfg = config.service
    os.environ[CONFIG_ENV] = os.path.abspath(config_path)

    class _App(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in {
                "bind": f"{cfg.listen_host}:{cfg.listen_port}",
                "workers": 1,
                "worker_class": "gthread",
                "threads": cfg.http_threads,
                "keepalive": int(cfg.http_idle_timeout_s),
                "limit_request_line": 8190,
            }.items():
                self.cfg.set(key, value)

        def load(self) -> Any:  # in the worker, after the fork
            return app_factory()

    _App().run()


def _granian(config: Config, config_path: str) -> None:
    try:
        from granian import Granian
        from granian.constants import Interfaces
    except ImportError as exc:
        raise ConfigError(["--server granian: pip install granian"]) from exc

    cfg = config.service
    os.environ[CONFIG_ENV] = os.path.abspath(config_path)
    Granian(
        "warmcache.web.server:app_factory",
        address=cfg.listen_host,
        port=cfg.listen_port,
        interface=Interfaces.WSGI,
        workers=1,
        blocking_threads=cfg.http_threads,
        factory=True,
    ).serve()


SERVERS: dict[str, Callable[[Config, str], None]] = {
    "waitress": _waitress,
    "gunicorn": _gunicorn,
    "granian": _granian,
    "werkzeug": _werkzeug,
}


def serve(config_path: str, server: str = "waitress") -> None:
    """Run one instance until SIGTERM or SIGINT (see the module docstring)."""
    if server not in SERVERS:
        raise ConfigError([f"--server: unknown {server!r} (valid: {', '.join(SERVERS)})"])
    config = load_config(config_path)
    if server != "waitress":
        # gunicorn and granian run the app in a child process: a SIGKILL or
        # SIGSTOP of this process leaves that child serving (and leading).
        log.warning(
            "--server %s is for benchmark comparisons, not for production: the "
            "instance runs in a child process of this one",
            server,
        )
    sys.stdout.flush()
    SERVERS[server](config, config_path)
