"""Response headers as tritonserver sends them: no Server and no Date header."""

from __future__ import annotations

import http.client

from tests.harness import run_server
from tests.models import BUNDLED_REPOSITORY


def test_no_server_or_date_header() -> None:
    args = ["--model-repository", str(BUNDLED_REPOSITORY)]
    with run_server(args, services=("http",)) as server:
        host, port = server.http_url.split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            for path in ("/v2/health/ready", "/v2", "/v2/models/simple"):
                conn.request("GET", path)
                response = conn.getresponse()
                response.read()
                assert response.status == 200
                names = {name.lower() for name, _ in response.getheaders()}
                assert "server" not in names and "date" not in names, (path, names)
        finally:
            conn.close()
