"""tritonserver-compatible command line -> Settings. Nothing else happens here."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got '{value}'")


# The server's own setting of Triton's Python backend (``--backend-config=python,...``).
SHARE_LOOP_CPU = "share-event-loop-cpu"


def backend_setting(configs: Sequence[str], backend: str, key: str) -> str | None:
    """The value the last ``--backend-config=<backend>,<key>=<value>`` gives ``key``."""
    value = None
    for config in configs:
        name, _, setting = config.partition(",")
        found, equals, given = setting.partition("=")
        if name == backend and equals and found == key:
            value = given
    return value


@dataclass
class Settings:
    model_repositories: list[str] = field(default_factory=lambda: ["./model_repository"])
    server_id: str = "triton"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    http_address: str = "0.0.0.0"
    grpc_address: str = "0.0.0.0"
    metrics_address: str = ""
    allow_http: bool = True
    allow_grpc: bool = True
    allow_metrics: bool = True
    allow_gpu_metrics: bool = True
    allow_cpu_metrics: bool = True
    metrics_interval_ms: int = 2000
    metrics_config: list[str] = field(default_factory=list)
    model_control_mode: str = "none"
    load_models: list[str] = field(default_factory=list)
    repository_poll_secs: float = 15.0
    strict_model_config: bool = False
    disable_auto_complete_config: bool = False
    strict_readiness: bool = True
    exit_on_error: bool = True
    exit_timeout_secs: float = 30.0
    exit_grace_secs: float = 5.0
    http_max_input_size: int = 64 * 1024 * 1024
    http_thread_count: int = 8
    model_config_name: str = ""
    allow_client_shm: bool = False
    backend_config: list[str] = field(default_factory=list)
    log_verbose: int = 0
    log_info: bool = True
    log_warning: bool = True
    log_error: bool = True
    log_format: str = "default"
    log_file: str = ""
    # gRPC
    grpc_infer_thread_count: int = 2
    grpc_use_ssl: bool = False
    grpc_use_ssl_mutual: bool = False
    grpc_server_cert: str = ""
    grpc_server_key: str = ""
    grpc_root_cert: str = ""
    grpc_infer_response_compression_level: str = "none"
    grpc_keepalive_time: int = 7200000
    grpc_keepalive_timeout: int = 20000
    grpc_keepalive_permit_without_calls: bool = False
    grpc_http2_max_pings_without_data: int = 2
    grpc_http2_min_recv_ping_interval_without_data: int = 300000
    grpc_http2_max_ping_strikes: int = 2

    @property
    def python_shares_loop_cpu(self) -> bool:
        """``--backend-config=python,share-event-loop-cpu=<bool>``: whether a Python model's
        thread whose runs are short shares the event loop's CPU (``server.affinity``)."""
        value = backend_setting(self.backend_config, "python", SHARE_LOOP_CPU)
        return True if value is None else _bool(value)

    @property
    def autocomplete(self) -> bool:
        return not (self.disable_auto_complete_config or self.strict_model_config)

    @property
    def metrics_bind_address(self) -> str:
        return self.metrics_address or self.http_address


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m server",
        description="Serve a Triton model repository over KServe v2 HTTP and gRPC.",
    )
    add = p.add_argument
    flag: dict[str, Any] = {"nargs": "?", "const": True, "type": _bool}
    add(
        "--model-repository",
        "--model-store",
        dest="model_repositories",
        action="append",
        metavar="PATH",
    )
    add("--id", dest="server_id", default="triton")
    add("--http-port", type=int, default=8000)
    add("--grpc-port", type=int, default=8001)
    add("--metrics-port", type=int, default=8002)
    add("--http-address", default="0.0.0.0")
    add("--grpc-address", default="0.0.0.0")
    add("--metrics-address", default="")
    add("--allow-http", default=True, **flag)
    add("--allow-grpc", default=True, **flag)
    add("--allow-metrics", default=True, **flag)
    add("--allow-gpu-metrics", default=True, **flag)
    add("--allow-cpu-metrics", default=True, **flag)
    add("--metrics-interval-ms", type=int, default=2000)
    add("--metrics-config", action="append", default=[], metavar="KEY=VALUE")
    add("--model-control-mode", choices=["none", "poll", "explicit"], default="none")
    add("--load-model", dest="load_models", action="append", default=[], metavar="NAME")
    add("--repository-poll-secs", type=float, default=15.0)
    add("--strict-model-config", default=False, **flag)
    add("--disable-auto-complete-config", default=False, nargs="?", const=True, type=_bool)
    add("--strict-readiness", default=True, **flag)
    add("--exit-on-error", default=True, **flag)
    add("--exit-timeout-secs", type=float, default=30.0)
    add(
        "--exit-grace-secs",
        type=float,
        default=5.0,
        help="after SIGTERM, keep accepting requests this long while readiness reports false",
    )
    add("--http-max-input-size", type=int, default=64 * 1024 * 1024)
    add("--http-thread-count", type=int, default=8)
    add("--model-config-name", default="")
    add("--allow-client-shm", default=False, **flag)
    add("--backend-config", action="append", default=[], metavar="BACKEND,KEY=VALUE")
    add("--log-verbose", type=int, default=0)
    add("--log-info", default=True, **flag)
    add("--log-warning", default=True, **flag)
    add("--log-error", default=True, **flag)
    add("--log-format", choices=["default", "ISO8601"], default="default")
    add("--log-file", default="")
    add("--grpc-infer-thread-count", type=int, default=2)
    add("--grpc-use-ssl", default=False, **flag)
    add("--grpc-use-ssl-mutual", default=False, **flag)
    add("--grpc-server-cert", default="")
    add("--grpc-server-key", default="")
    add("--grpc-root-cert", default="")
    add(
        "--grpc-infer-response-compression-level",
        choices=["none", "low", "medium", "high"],
        default="none",
    )
    add("--grpc-keepalive-time", type=int, default=7200000)
    add("--grpc-keepalive-timeout", type=int, default=20000)
    add("--grpc-keepalive-permit-without-calls", default=False, **flag)
    add("--grpc-http2-max-pings-without-data", type=int, default=2)
    add("--grpc-http2-min-recv-ping-interval-without-data", type=int, default=300000)
    add("--grpc-http2-max-ping-strikes", type=int, default=2)
    return p


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    parser = build_parser()
    ns = parser.parse_args(argv)
    values = vars(ns)
    if not values["model_repositories"]:
        values["model_repositories"] = ["./model_repository"]
    settings = Settings(**values)
    if settings.load_models and "*" in settings.load_models and len(settings.load_models) > 1:
        parser.error("--load-model=* must be the only --load-model")
    try:
        settings.python_shares_loop_cpu  # noqa: B018 - read once here to refuse a bad value
    except argparse.ArgumentTypeError as exc:
        parser.error(f"--backend-config=python,{SHARE_LOOP_CPU}: {exc}")
    return settings


def configure_logging(settings: Settings) -> None:
    level = logging.ERROR
    if settings.log_warning:
        level = logging.WARNING
    if settings.log_info:
        level = logging.INFO
    if settings.log_verbose > 0:
        level = logging.DEBUG
    if not settings.log_error and level == logging.ERROR:
        level = logging.CRITICAL
    datefmt = "%Y-%m-%dT%H:%M:%SZ" if settings.log_format == "ISO8601" else "%m%d %H:%M:%S"
    handler: logging.Handler = (
        logging.FileHandler(settings.log_file) if settings.log_file else logging.StreamHandler()
    )
    handler.setFormatter(
        logging.Formatter("%(levelname).1s%(asctime)s %(process)d %(name)s] %(message)s", datefmt)
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # uvicorn's access log costs time on every request; keep it for verbose runs only.
    logging.getLogger("uvicorn.access").setLevel(
        logging.DEBUG if settings.log_verbose else logging.WARNING
    )


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    configure_logging(settings)
    from server import allocator
    from server.app import run

    allocator.tune()

    return run(settings)
