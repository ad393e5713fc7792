"""The backend seam: a framework plugs in by implementing ``Backend`` and ``ModelInstance``."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from server.errors import ServerError
from server.repository.view import ModelView
from server.types import InferRequest

# Per-request outcome of one execution: output tensors by name, or that request's error.
RequestOutputs = dict[str, np.ndarray] | ServerError


@dataclass(frozen=True, slots=True)
class InstanceSpec:
    """Where one model instance runs."""

    name: str  # e.g. "simple_0_1": group name plus index
    group: str
    kind: str  # "CPU", "GPU" or "MODEL"
    device_id: int = -1  # CUDA ordinal among the devices this process sees; -1 on CPU
    device_uuid: str = ""  # GPU or MIG UUID where known
    device_name: str = ""  # product or MIG profile name


@dataclass(slots=True)
class Timing:
    """Monotonic nanosecond marks an instance sets while it executes a batch."""

    compute_start_ns: int = 0
    input_end_ns: int = 0
    infer_end_ns: int = 0
    output_end_ns: int = 0


class ModelInstance(abc.ABC):
    """One loaded copy of a model version. ``execute`` runs on the instance's own thread, or
    on the event loop for short runs where ``short_runs_inline`` allows it."""

    # True where a run executes no user Python code and cannot block on anything but its
    # own computation (a tensor framework on the CPU): the scheduler may then run a batch
    # whose recent runs were short on the event loop itself (``server.scheduler.base``).
    short_runs_inline: bool = False
    # True where a run is mostly the interpreter's (a Python model): the instance's thread
    # then shares the event loop's CPU while its recent runs are short (``server.affinity``).
    short_runs_beside_loop: bool = False

    # Python-backend models take the whole request list as it is; tensor backends take
    # inputs concatenated along the batch dim.
    @abc.abstractmethod
    def execute(self, requests: Sequence[InferRequest], timing: Timing) -> list[RequestOutputs]:
        """Run one batch; return one entry per request, in order."""

    def unload(self) -> None:  # noqa: B027 - optional hook
        """Release framework resources."""


class Backend(abc.ABC):
    name: str = ""

    def autocomplete(self, config: Any, model_dir: Path, version_dir: Path | None) -> None:  # noqa: B027
        """Fill the missing parts of ``config`` from the model file; default: nothing."""

    def gpu_unusable_reason(self) -> str | None:
        """Why this backend cannot run instances on this machine's GPUs, or None when it can.
        Asked only where the server sees a GPU and a model leaves placement to KIND_AUTO, whose
        instances then run on the CPU; a KIND_GPU instance fails to load instead."""
        return None

    @abc.abstractmethod
    def load(
        self, config: Any, view: ModelView, version_dir: Path, instance: InstanceSpec
    ) -> ModelInstance:
        """Create one instance; raise ServerError with a clear reason on failure."""

    def model_file(self, config: Any, version_dir: Path) -> Path:
        return version_dir / (config.default_model_filename or "model")
