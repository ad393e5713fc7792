"""The trace and logging extensions: settings a client reads and changes at run time.

One store per core, shared by the HTTP and gRPC front ends, so both see the same values and
give the same errors. Values are protocol-neutral Python values; each front end converts
them to its wire shape.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from server.errors import invalid_arg, unsupported

TRACE_LEVELS = ("OFF", "TIMESTAMPS", "TENSORS")
_TRACE_INTS = ("trace_rate", "trace_count", "log_frequency")
TRACE_DEFAULTS: dict[str, Any] = {
    "trace_level": ["OFF"],
    "trace_rate": "1000",
    "trace_count": "-1",
    "log_frequency": "0",
    "trace_file": "",
    "trace_mode": "triton",
}
LOG_FORMATS = ("default", "ISO8601")
_DATEFMT = {"default": "%m%d %H:%M:%S", "ISO8601": "%Y-%m-%dT%H:%M:%SZ"}


class TraceSettings:
    """Global trace settings with per-model overrides. This server records no traces, so a
    level other than OFF is refused rather than accepted and ignored."""

    def __init__(self) -> None:
        self.global_settings: dict[str, Any] = dict(TRACE_DEFAULTS)
        self.models: dict[str, dict[str, Any]] = {}

    def get(self, model: str = "") -> dict[str, Any]:
        merged = dict(self.global_settings)
        merged.update(self.models.get(model, {}) if model else {})
        return {key: list(v) if isinstance(v, list) else v for key, v in merged.items()}

    def update(self, changes: dict[str, Any], model: str = "") -> dict[str, Any]:
        """``changes`` maps a key to a string, a list of strings, or None (None clears a
        model's override or restores a global default)."""
        checked: dict[str, Any] = {}
        for key, value in changes.items():
            if key not in TRACE_DEFAULTS:
                continue  # Triton ignores keys it does not know
            if value is None:
                checked[key] = None
                continue
            checked[key] = _trace_value(key, value)
        # Every value is read before the level is judged, as Triton reads them all before
        # it checks the combination.
        if any(level != "OFF" for level in checked.get("trace_level") or ()):
            raise unsupported(
                "tracing is not supported by this server; 'trace_level' can only be OFF"
            )
        target = self.models.setdefault(model, {}) if model else self.global_settings
        for key, value in checked.items():
            if value is None:
                if model:
                    target.pop(key, None)
                else:
                    target[key] = TRACE_DEFAULTS[key]
            else:
                target[key] = value
        return self.get(model)


def _trace_value(key: str, value: Any) -> Any:
    if key == "trace_level":
        levels = value if isinstance(value, list) else [value]
        if not all(isinstance(v, str) for v in levels):
            raise invalid_arg("expecting an array of strings for 'trace_level'")
        for level in levels:
            if level not in TRACE_LEVELS:
                raise invalid_arg(f"Unable to parse 'trace_level', got: {level}")
        return list(levels)
    if isinstance(value, list):
        if len(value) != 1:
            raise invalid_arg(f"expecting a single value for '{key}'")
        value = value[0]
    if not isinstance(value, str):
        raise invalid_arg(f"expecting a string for '{key}'")
    if key in _TRACE_INTS:
        try:
            int(value)
        except ValueError:
            raise invalid_arg(f"Unable to parse '{key}', got: {value}") from None
    if key == "trace_mode" and value not in ("triton", "opentelemetry"):
        raise invalid_arg(f"Unable to parse 'trace_mode', got: {value}")
    return value


@dataclass
class LogSettings:
    log_file: str = ""
    log_info: bool = True
    log_warning: bool = True
    log_error: bool = True
    log_verbose_level: int = 0
    log_format: str = "default"

    @classmethod
    def from_logging(cls) -> LogSettings:
        """Read what the command line configured into the logging module."""
        root = logging.getLogger()
        level = root.getEffectiveLevel()
        settings = cls(
            log_info=level <= logging.INFO,
            log_warning=level <= logging.WARNING,
            log_error=level <= logging.ERROR,
            log_verbose_level=1 if level <= logging.DEBUG else 0,
        )
        for handler in root.handlers:
            if isinstance(handler, logging.FileHandler):
                settings.log_file = handler.baseFilename
            formatter = handler.formatter
            if formatter is not None and formatter.datefmt == _DATEFMT["ISO8601"]:
                settings.log_format = "ISO8601"
        return settings

    def as_dict(self) -> dict[str, Any]:
        return {
            "log_file": self.log_file,
            "log_info": self.log_info,
            "log_warning": self.log_warning,
            "log_error": self.log_error,
            "log_verbose_level": self.log_verbose_level,
            "log_format": self.log_format,
        }

    def update(
        self,
        changes: dict[str, Any],
        wrong_kind: Callable[[str, str], Exception] | None = None,
        unknown_format: Callable[[str], Exception] | None = None,
    ) -> dict[str, Any]:
        """Apply ``changes``, checked in Triton's order. A value of the wrong kind raises
        ``wrong_kind(key, kind)`` (kind "boolean", "unsigned-integer" or "string") and a
        format other than Triton's ``unknown_format(value)``, as the HTTP front end answers;
        without them, they are refused in the words of Triton's gRPC front end. As in
        Triton, each setting takes effect once it is read, so those before a refused one
        stay changed."""
        if changes.get("log_file") is not None:
            raise unsupported("log file location can not be updated through network protocol")
        try:
            self._update(changes, wrong_kind, unknown_format)
        finally:
            self._apply()
        return self.as_dict()

    def _update(
        self,
        changes: dict[str, Any],
        wrong_kind: Callable[[str, str], Exception] | None,
        unknown_format: Callable[[str], Exception] | None,
    ) -> None:
        refuse = wrong_kind or _grpc_wrong_kind
        for key in ("log_info", "log_warning", "log_error"):
            value = changes.get(key)
            if value is not None:
                if not isinstance(value, bool):
                    raise refuse(key, "boolean")
                setattr(self, key, value)
        verbose = changes.get("log_verbose_level")
        if verbose is not None:
            if (
                isinstance(verbose, bool)
                or not isinstance(verbose, int)
                or not 0 <= verbose < 2**32
            ):
                raise refuse("log_verbose_level", "unsigned-integer")
            self.log_verbose_level = verbose
        fmt = changes.get("log_format")
        if fmt is not None:
            if wrong_kind is not None and not isinstance(fmt, str):
                raise wrong_kind("log_format", "string")
            if fmt not in LOG_FORMATS:
                if unknown_format is not None:
                    raise unknown_format(fmt)
                raise invalid_arg(f"invalid argument for log_format, got: {fmt}")
            self.log_format = fmt

    def _apply(self) -> None:
        level = logging.CRITICAL
        if self.log_error:
            level = logging.ERROR
        if self.log_warning:
            level = logging.WARNING
        if self.log_info:
            level = logging.INFO
        if self.log_verbose_level > 0:
            level = logging.DEBUG
        root = logging.getLogger()
        root.setLevel(level)
        for handler in root.handlers:
            formatter = handler.formatter
            if formatter is not None:
                handler.setFormatter(logging.Formatter(formatter._fmt, _DATEFMT[self.log_format]))


def _grpc_wrong_kind(key: str, kind: str) -> Exception:
    return invalid_arg(f"expect {kind.replace('-', ' ')} for '{key}'")


@dataclass
class RuntimeSettings:
    trace: TraceSettings
    logging: LogSettings


_STORES: weakref.WeakKeyDictionary[Any, RuntimeSettings] = weakref.WeakKeyDictionary()


def for_core(core: Any) -> RuntimeSettings:
    store = _STORES.get(core)
    if store is None:
        store = _STORES[core] = RuntimeSettings(TraceSettings(), LogSettings.from_logging())
    return store


def check_trace_model(core: Any, model: str) -> None:
    if model and model not in core.manager.models:
        raise invalid_arg(f"Request for unknown model : {model}")
