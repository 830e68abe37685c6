"""``hpo dashboard``: the real optuna-dashboard on a study storage, bound to 127.0.0.1 unless told otherwise.

Each hpo study gets a note (shown on its dashboard page) with its stored config and teacher, so a reader sees what
was searched without the YAML file. Trial metrics and fail reasons are user attributes, which the trial view lists;
objective names come from ``set_metric_names`` (set when the study is created).
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna
import yaml

from hpo.study import CONFIG_ATTR, TEACHER_ATTR, study_task
from objectives import ConfigError
from storage import create_storage, redact_url, schema_exists

NOTE_TITLE = "## Study config (written by hpo dashboard)"
"""First line of the note hpo writes; a note that starts otherwise was written by a person and is left alone."""

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")

OPEN_HOSTS = ("0.0.0.0", "::", "")
"""Bind addresses that open the dashboard to every name the machine answers to (``--host 0.0.0.0``)."""


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def config_note(study: optuna.Study) -> str | None:
    """The Markdown note of an hpo study: its stored config and teacher; None for a study without a config."""
    config = study.user_attrs.get(CONFIG_ATTR)
    if config is None:
        return None
    lines = [NOTE_TITLE, ""]
    teacher = study.user_attrs.get(TEACHER_ATTR)
    if teacher:
        metrics = study_task(study).card_metrics[:3]
        shown = ", ".join(f"{k} {teacher[k]:.4g}" for k in metrics if k in teacher)
        lines += [f"Teacher `{teacher.get('model', '?')}`: {shown}.", ""]
    budget = study.user_attrs.get("n_trials")
    if budget is not None:
        lines += [f"Trial budget: {budget}.", ""]
    lines += ["```yaml", yaml.safe_dump(config, sort_keys=False).rstrip(), "```"]
    return "\n".join(lines)


def annotate(storage: optuna.storages.BaseStorage) -> int:
    """Write or refresh the config note of every hpo study in ``storage``; returns how many notes changed."""
    from optuna_dashboard import get_note, save_note

    changed = 0
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        note = config_note(study)
        current = get_note(study)
        if note is None or current == note or (current and not current.startswith(NOTE_TITLE)):
            continue
        save_note(study, note)
        changed += 1
    return changed


def host_check(app: Callable, bind: str, allow: tuple[str, ...] = ()) -> Callable:
    """WSGI middleware answering 403 to a request whose ``Host`` header (port dropped) is not a loopback name, the
    bind address, or one of the names in ``allow`` (``--allow-host``).

    A web page on another site can make the browser send requests to the dashboard under its own name (DNS
    rebinding); the ``Host`` header still names that site, so the dashboard's write API refuses them. Bound to
    ``0.0.0.0`` the check stays on: the names users reach it by (a Service or server name) must be listed.
    """
    allowed = {*LOCAL_HOSTS, *(name.strip("[]").lower() for name in allow)}
    if bind not in OPEN_HOSTS:
        allowed.add(bind.strip("[]").lower())

    def checked(environ: dict, start_response: Callable) -> Any:
        header = environ.get("HTTP_HOST", "")
        name = header.rsplit(":", 1)[0] if not header.endswith("]") else header  # drop the port
        if name.strip("[]").lower() in allowed:
            return app(environ, start_response)
        start_response("403 Forbidden", [("Content-Type", "text/plain")])
        return [
            f"Host {header!r} refused: use http://127.0.0.1, or start hpo dashboard with --allow-host "
            f"{name.strip('[]') or 'NAME'}\n".encode()
        ]

    return checked


def check_allowed_host(name: str) -> str:
    """``name`` of ``--allow-host`` as the Host header carries it without its port; ValueError for a URL, a port,
    a path or an empty name."""
    if not name or any(c in name for c in "/ @") or (":" in name and not name.startswith("[")):
        raise ValueError(
            f"--allow-host: expected a host name or address like dashboard.example.org, 10.0.0.5 or [fd00::5] "
            f"(no scheme, port or path), got {name!r}"
        )
    return name


def _reach(host: str) -> str:
    if host in LOCAL_HOSTS:
        return "bound to this machine only; from elsewhere use an SSH tunnel, or --host 0.0.0.0 to expose it"
    return "reachable from the network: optuna-dashboard has no login, so expose it only on a trusted network"


def serve(storage_url: str, host: str = "127.0.0.1", port: int = 8080, allow: tuple[str, ...] = ()) -> None:
    """Serve optuna-dashboard on ``storage_url`` at ``host:port`` until interrupted, to requests whose ``Host`` is
    a loopback name, ``host`` or one of ``allow`` (:func:`host_check`)."""
    from optuna_dashboard import wsgi

    if not schema_exists(storage_url):
        raise ConfigError("--storage", f"{redact_url(storage_url)} has no studies; run hpo create or hpo run first")
    storage = create_storage(storage_url, create_tables=False)
    annotate(storage)
    app = host_check(wsgi(storage), host, allow)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server_class = type("_Server", (_Server,), {"address_family": family})
    try:
        server = make_server(host, port, app, server_class=server_class, handler_class=_QuietHandler)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError("--port", f"port {port} on {host} is in use; pick another with --port") from None
        raise ConfigError("--host", f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    bound = server.server_address[1]
    shown_host = f"[{host}]" if ":" in host else host
    print(f"optuna-dashboard on {redact_url(storage_url)}", flush=True)
    print(f"  http://{shown_host}:{bound}/dashboard  ({host}: {_reach(host)})", flush=True)
    if host in OPEN_HOSTS:
        names = ", ".join([*LOCAL_HOSTS, *allow])
        print(f"  answers requests addressed to {names} only (add names with --allow-host)", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        storage.engine.dispose()
