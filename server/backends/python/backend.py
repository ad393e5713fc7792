"""The Python backend: runs ``<version>/model.py`` files written for Triton, unmodified.

Model code runs in this process, on the scheduler's executor threads (one per instance), so a
request costs a function call rather than the stub process and shared-memory copies that
Triton uses; ``bench/python_backend_overhead.py`` measures the difference. The event loop
never runs model code, so a slow or hung model stalls only its own instances.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import itertools
import json
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from google.protobuf import json_format

from server.backends.base import Backend, InstanceSpec, ModelInstance, RequestOutputs, Timing
from server.backends.python import imports, pb_utils
from server.backends.python.autocomplete import ModelConfig
from server.backends.python.messages import InferenceResponse
from server.backends.python.request import (
    InferenceRequest,
    InferenceResponseSender,
    response_outputs,
)
from server.errors import ServerError, internal, invalid_arg, unavailable
from server.repository.view import ModelView
from server.types import InferRequest, InferResponse, OutputTensor

log = logging.getLogger(__name__)

MODULE_NAME = "triton_python_backend_utils"
# What a model's code may raise and have reported as its own error, as Triton's stub does,
# sys.exit() included: here it would otherwise end the whole server.
MODEL_ERRORS = (Exception, SystemExit)
_module_ids = itertools.count()
_import_lock = threading.Lock()


def install_module() -> None:
    """Make ``import triton_python_backend_utils`` give this server's implementation."""
    sys.modules.setdefault(MODULE_NAME, pb_utils)


def import_model(path: Path, label: str, instance: str = "") -> ModuleType:
    """Import one ``model.py`` as a module of its own, so instances do not share globals.

    It is the ``model`` module of a package of its own whose modules are the files beside
    it, in its version folder and then its model folder, as Triton finds them (where it
    imports ``<version>.model``), but this model's own (``imports``)."""
    install_module()
    package = f"_triton_model_{label}_{next(_module_ids)}"
    name = f"{package}.model"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise unavailable(f"unable to import '{path}'")
    owner = imports.prepare(package, [str(path.parent), str(path.parent.parent)], instance)
    module = importlib.util.module_from_spec(spec)
    module.__dict__["__builtins__"] = owner.builtins
    with _import_lock:
        # Registered like any import, so dataclasses, pickling and type hints in the model
        # can find their module; ``forget_model`` drops it at unload.
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            imports.release(package)
            raise
    return module


def forget_model(module: ModuleType | None) -> None:
    if module is not None:
        imports.release(module.__name__.rpartition(".")[0])


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


_SERVER_FILES = str(Path(__file__).resolve().parents[2]) + os.sep


def _frames(exc: BaseException) -> str:
    """The model's frames, innermost first, as Triton's stub reports them (not the server's
    own, which call the model)."""
    frames = [
        f
        for f in traceback.extract_tb(exc.__traceback__)
        if not f.filename.startswith(_SERVER_FILES)
    ]
    return "".join(f"  {f.filename}({f.lineno}): {f.name}\n" for f in reversed(frames))


def _model_error(exc: BaseException) -> str:
    """An error of the model's code, as Triton's stub words it."""
    return f"{_describe(exc)}\n\nAt:\n{_frames(exc)}"


def _model_class(module: ModuleType, path: Path) -> Any:
    cls = getattr(module, "TritonPythonModel", None)
    if cls is None:
        raise unavailable(f"'{path}' does not define the class TritonPythonModel")
    return cls


class PythonBackend(Backend):
    name = "python"

    def autocomplete(self, config: Any, model_dir: Path, version_dir: Path | None) -> None:
        from server.repository.config import config_to_json_dict

        if version_dir is None:
            return
        path = self.model_file(config, version_dir)
        if not path.is_file():
            return
        try:
            module = import_model(path, f"{config.name}_autocomplete")
        except MODEL_ERRORS as exc:
            raise invalid_arg(_model_error(exc)) from None
        forget_model(module)
        try:
            cls = _model_class(module, path)
        except ServerError:
            return
        hook = getattr(cls, "auto_complete_config", None)
        if hook is None:
            return
        try:
            result = hook(ModelConfig(config_to_json_dict(config)))
        except MODEL_ERRORS as exc:
            raise invalid_arg(
                f"auto_complete_config of model '{config.name}' failed: {_describe(exc)}"
            ) from None
        if not isinstance(result, ModelConfig):
            raise invalid_arg(
                f"auto_complete_config of model '{config.name}' must return the ModelConfig it "
                f"was given, got {type(result).__name__}"
            )
        completed = type(config)()
        try:
            json_format.ParseDict(result.as_dict(), completed)
        except (json_format.ParseError, ValueError) as exc:
            raise invalid_arg(
                f"auto_complete_config of model '{config.name}' produced an invalid configuration: {exc}"
            ) from None
        config.CopyFrom(completed)

    def load(
        self, config: Any, view: ModelView, version_dir: Path, instance: InstanceSpec
    ) -> ModelInstance:
        from server.repository.config import config_to_json_dict

        path = self.model_file(config, version_dir)
        if not path.is_file():
            raise unavailable(f"unable to find '{path}' for model '{config.name}'")
        if "EXECUTION_ENV_PATH" in view.parameters:
            log.warning(
                "model '%s': EXECUTION_ENV_PATH is ignored; the model runs in the server's environment",
                config.name,
            )
        module = None
        try:
            module = import_model(
                path, f"{config.name}_{view.version}_{instance.name}", instance.name
            )
            model = _model_class(module, path)()
            args = {
                "model_config": json.dumps(config_to_json_dict(config)),
                "model_instance_kind": instance.kind,
                "model_instance_name": instance.name,
                "model_instance_device_id": str(max(instance.device_id, 0)),
                "model_repository": str(version_dir.parent),
                "model_version": view.version,
                "model_name": config.name,
            }
            initialize = getattr(model, "initialize", None)
            if initialize is not None:
                initialize(args)
        except ServerError:
            forget_model(module)
            raise
        except MODEL_ERRORS as exc:
            forget_model(module)
            log.error("model '%s' failed to initialize:\n%s", config.name, traceback.format_exc())
            raise unavailable(_model_error(exc)) from None
        return PythonInstance(model, view, instance, module)


class PythonInstance(ModelInstance):
    # Triton's Python backend reports every execution to the statistics, also one whose
    # execute() raised.
    reports_failed_executions = True

    def __init__(
        self, model: Any, view: ModelView, instance: InstanceSpec, module: ModuleType | None = None
    ) -> None:
        self._model = model
        self._module = module
        self._view = view
        self._name = instance.name
        self._is_async = inspect.iscoroutinefunction(getattr(model, "execute", None))
        # Coroutine ``execute`` methods run on a loop of this instance's own, never the server's.
        self._loop = asyncio.new_event_loop() if self._is_async else None
        # A decoupled model's execute often returns at once and leaves the work to threads
        # of its own, which would inherit the loop's CPU: its thread stays where it is.
        self.short_runs_beside_loop = not view.decoupled

    def execute(self, requests: Sequence[InferRequest], timing: Timing) -> list[RequestOutputs]:
        view = self._view
        # The owners of the inputs the model is given, by id: an output over one passes
        # through. Held here, so that no other object can take one's id while a response
        # may still be sent.
        inputs: dict[int, object] = {}
        # A model that is not decoupled seldom asks for its requests' response senders:
        # each request makes its own when asked (``get_response_sender``).
        senders: list[InferenceResponseSender | None]
        if view.decoupled:
            senders = [
                InferenceResponseSender(r, True, self._converter(r, inputs)) for r in requests
            ]
        else:
            senders = [None] * len(requests)
        wrapped = [
            InferenceRequest.incoming(r, view, s, inputs)
            for r, s in zip(requests, senders, strict=True)
        ]
        timing.input_end_ns = time.monotonic_ns()
        try:
            if self._loop is not None:
                result = self._loop.run_until_complete(self._model.execute(wrapped))
            else:
                result = self._model.execute(wrapped)
        except MODEL_ERRORS as exc:
            timing.infer_end_ns = time.monotonic_ns()
            log.error("model '%s' raised in execute:\n%s", view.name, traceback.format_exc())
            error = internal(
                f"Failed to process the request(s) for model '{self._name}', "
                f"message: {_model_error(exc)}"
            )
            return self._fail(senders, error)
        timing.infer_end_ns = time.monotonic_ns()
        if view.decoupled:
            if result is not None:
                return self._fail(
                    senders,
                    internal(
                        f"the execute function of decoupled model '{view.name}' must return None; "
                        "responses go through the response sender"
                    ),
                )
            return [{} for _ in requests]
        if result is None:
            result = [w.sent_response() for w in wrapped]
        if not isinstance(result, (list, tuple)) or len(result) != len(requests):
            count = len(result) if isinstance(result, (list, tuple)) else type(result).__name__
            return [
                internal(
                    f"model '{view.name}' must return a list of {len(requests)} responses from "
                    f"execute, got {count}"
                )
            ] * len(requests)
        return [response_outputs(response, view, inputs) for response in result]

    def _fail(
        self, senders: list[InferenceResponseSender | None], error: ServerError
    ) -> list[RequestOutputs]:
        if not self._view.decoupled:
            return [error] * len(senders)
        # A stream learns of the failure in-band; the request fails all the same, unless
        # the model had already completed its stream.
        return [error if sender is None or sender.fail(error) else {} for sender in senders]

    def _converter(self, request: InferRequest, inputs: dict[int, object]) -> Any:
        view = self._view

        def convert(response: InferenceResponse, final: bool) -> InferResponse | ServerError:
            outputs = response_outputs(response, view, inputs)
            if isinstance(outputs, ServerError):
                return outputs
            try:
                built = _build(request, view, outputs)
            except ServerError as exc:
                return exc
            built.final = final
            return built

        return convert

    def unload(self) -> None:
        finalize = getattr(self._model, "finalize", None)
        try:
            if finalize is not None:
                if inspect.iscoroutinefunction(finalize) and self._loop is not None:
                    self._loop.run_until_complete(finalize())
                else:
                    finalize()
        except MODEL_ERRORS:
            log.exception("model '%s': finalize failed", self._view.name)
        finally:
            if self._loop is not None:
                self._loop.close()
            forget_model(self._module)


def _build(request: InferRequest, view: ModelView, outputs: dict[str, Any]) -> InferResponse:
    from server import core as core_module

    core = core_module.current
    if core is not None:
        return core.build_response(request, view, outputs)
    tensors = [
        OutputTensor(
            name,
            view.outputs[name].datatype if name in view.outputs else "BYTES",
            tuple(array.shape),
            array,
        )
        for name, array in outputs.items()
    ]
    return InferResponse(request.model_name, view.version, tensors, request.id)


def create_backend() -> Backend:
    install_module()
    return PythonBackend()
