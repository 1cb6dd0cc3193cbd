"""optuna-dashboard's own app, served on a loopback port, and the JSON its pages fetch.

The dashboard comes with the ``dev`` extra (pyproject.toml). Without it the tests that use it
skip, except under CI=true, where they fail: CI must not pass by skipping them."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import threading
import urllib.request
from collections.abc import Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest


def require_dashboard() -> None:
    """Skip (fail under CI=true) when optuna-dashboard is not installed."""
    if importlib.util.find_spec("optuna_dashboard") is None:
        message = "needs optuna-dashboard (pip install '.[dev]')"
        if os.environ.get("CI") == "true":
            pytest.fail(message + "; under CI=true this fails instead of skipping")
        pytest.skip(message)


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        pass


@contextlib.contextmanager
def served_dashboard(storage_url: str) -> Iterator[str]:
    """optuna-dashboard's WSGI app for ``storage_url`` on 127.0.0.1 (a free port), served from
    a thread until the block ends; yields its base URL."""
    require_dashboard()
    import optuna_dashboard

    server: WSGIServer = make_server(
        "127.0.0.1", 0, optuna_dashboard.wsgi(storage_url), handler_class=_Quiet
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


def study_id(base: str, name: str) -> int:
    """The id the dashboard gives the study called ``name``."""
    studies = get_json(f"{base}/api/studies")["study_summaries"]
    return next(int(s["study_id"]) for s in studies if s["study_name"] == name)


def study_detail(base: str, name: str) -> dict[str, Any]:
    """What the dashboard's study pages fetch: /api/studies/<id> (trials, best trials,
    objective names, notes, study user attributes)."""
    return get_json(f"{base}/api/studies/{study_id(base, name)}")


def attrs(serialized: list[dict[str, str]]) -> dict[str, str]:
    """The dashboard's user attributes (a list of {"key", "value"}, values as text) as a dict."""
    return {a["key"]: a["value"] for a in serialized}


def feasible_in_dashboard(trial: dict[str, Any]) -> bool:
    """Feasibility as the dashboard's pages compute it: every constraint value <= 0."""
    return all(value <= 0 for value in trial["constraints"])
