"""A bug behind a route still answers in Triton's error shape, which tritonclient parses."""

from __future__ import annotations

from typing import Any

from starlette.testclient import TestClient

from server.http.app import create_app


class _BrokenCore:
    exiting = False

    def server_metadata(self) -> dict[str, Any]:
        raise RuntimeError("boom")


def test_unexpected_exception_is_a_json_500() -> None:
    app = create_app(_BrokenCore())  # type: ignore[arg-type]
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/v2")
    assert response.status_code == 500
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {"error": "internal error: boom"}
