"""Which request targets the HTTP listener answers on its direct infer path, and the parsed
request's accessors."""

from __future__ import annotations

import pytest

from server.http.app import create_app
from server.http.server import Request, infer_target


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (b"/v2/models/simple/infer", ("simple", None)),
        (b"/v2/models/simple/versions/3/infer", ("simple", "3")),
        (b"/v2/models/simple/versions/007/infer", ("simple", "007")),
        (b"/v2/models/a.b-c_d/infer", ("a.b-c_d", None)),
        (b"/v2/models/infer/infer", ("infer", None)),
        (b"/v2/models/versions/versions/12/infer", ("versions", "12")),
    ],
)
def test_infer_targets(path: bytes, expected: tuple[str, str | None]) -> None:
    assert infer_target(path) == expected


@pytest.mark.parametrize(
    "path",
    [
        b"/v2/models/simple/versions/one/infer",
        b"/v2/models/simple/versions/-1/infer",
        b"/v2/models/simple/versions/1.0/infer",
        b"/v2/models/simple/versions//infer",
        b"/v2/models/simple/versions/infer",
        b"/v2/models/simple/version/1/infer",
        b"/v2/models/simple/versions/1/extra/infer",
        b"/v2/models//versions/1/infer",
        b"/v2/models//infer",
        b"/v2/models/infer",
        b"/v2/models/a/b/infer",
        b"/v2/models/simple//infer",
        b"//v2/models/simple/infer",
        b"/v2/models/simple/infer/",
        b"/v2/models/simple/inference",
        b"/v2/models/simple/ready",
        b"/v2/models/simple",
        b"/v1/models/simple/infer",
        b"/V2/models/simple/infer",
        b"/v2/models/sim%70le/infer",
        b"/v2/models/simple/versions/%31/infer",
        b"/v2/models/%zz/infer",
        b"/v2/models/caf\xc3\xa9/infer",
        b"",
    ],
)
def test_paths_left_to_the_application(path: bytes) -> None:
    assert infer_target(path) is None


@pytest.mark.parametrize(
    "path",
    [
        b"/v2/models/simple/infer",
        b"/v2/models/simple/versions/2/infer",
        b"/v2/models/simple/versions/x/infer",
        b"/v2/models//infer",
        b"/v2/models/a/b/infer",
        b"/v2/models/simple/versions/1/extra/infer",
        b"/v2/models/simple/stats",
    ],
)
def test_listener_and_application_agree_on_plain_paths(path: bytes) -> None:
    # Whatever the listener answers directly, FastAPI would route to its infer route with
    # the same model and version.
    from starlette.routing import Match

    app = create_app(None)  # type: ignore[arg-type]
    scope = {"type": "http", "method": "POST", "path": path.decode("ascii"), "root_path": ""}
    routed = None
    for route in app.router.routes:
        match, child = route.matches(scope)
        if match is Match.FULL:
            if getattr(route, "name", "") == "infer":
                params = child["path_params"]
                routed = (params["model"], params.get("version"))
            break
    target = infer_target(path)
    if target is not None:
        assert routed == target


def test_request_header_and_body() -> None:
    request = Request()
    request.headers = [(b"content-type", b"application/json"), (b"x-twice", b"1")]
    request.headers.append((b"x-twice", b"2"))
    assert request.header(b"x-twice") == "1"
    assert request.header(b"content-type") == "application/json"
    assert request.header(b"missing") is None
    assert request.body() == b""
    request.chunks = [b"abc"]
    assert request.body() == b"abc"
    request.chunks = [b"ab", b"", b"cd"]
    assert request.body() == b"abcd"
