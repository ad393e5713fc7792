"""Model warmup (``model_warmup`` in config.pbtxt), run on each instance before the version
is served, with Triton's semantics:

- every sample runs ``count`` times (once when ``count`` is 0), in the order given;
- ``batch_size`` requests of one item each make up one execution; a ``batch_size`` of 0
  runs nothing, and more than 1 on a model without batching fails the load;
- ``zero_data`` is zeros (empty strings for BYTES), ``random_data`` random values (empty
  strings for BYTES), ``input_data_file`` the raw bytes of ``<model>/warmup/<file>``;
- inputs the model does not have are left out; the requests are then checked as client
  requests are, so a sample with a missing input or a wrong datatype fails the load with the
  message a client would get.

Warmup requests run on the instance directly: they are not counted in statistics or metrics.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from server.backends.base import ModelInstance, Timing
from server.errors import ServerError, invalid_arg
from server.repository.view import ModelView, config_type_name
from server.tensors import (
    BYTES,
    CONFIG_TO_WIRE,
    NUMPY_DTYPES,
    deserialize_bytes,
    element_count,
    request_prefix,
)
from server.types import InferInput, InferRequest
from server.validation import validate_request

log = logging.getLogger(__name__)

WARMUP_DIR = "warmup"


def warmup(
    config: Any, view: ModelView, instance: ModelInstance, name: str, model_dir: Path
) -> None:
    """Run every warmup sample of ``config`` on ``instance`` (named ``name``); raise
    ServerError (INVALID_ARG) when a sample cannot be built or fails."""
    if not config.model_warmup:
        return
    if view.decoupled:
        log.warning(
            "model '%s': warmup of decoupled models is not supported; instance '%s' serves "
            "without it",
            config.name,
            name,
        )
        return
    rng = np.random.default_rng()
    for sample in config.model_warmup:
        # Inputs the model does not have are left out, as tritonserver leaves them out.
        inputs = [
            _input(input_name, spec, config, model_dir, rng)
            for input_name, spec in sample.inputs.items()
            if input_name in view.inputs
        ]
        if sample.batch_size == 0:
            continue
        if config.max_batch_size == 0 and sample.batch_size > 1:
            reason = f"batch size {sample.batch_size} for '{name}', max allowed is 0; "
            raise invalid_arg(
                f"failed to run warmup sample '{sample.name}': {reason * sample.batch_size}"
            )
        for _ in range(max(sample.count, 1)):
            requests = []
            for _ in range(sample.batch_size):
                request = InferRequest(model_name=config.name, model_version=view.version)
                request.inputs = [
                    InferInput(t.name, t.datatype, t.shape, t.data, {}) for t in inputs
                ]
                validate_request(request, view)
                requests.append(request)
            results = instance.execute(requests, Timing())
            errors = [r.message for r in results if isinstance(r, ServerError)]
            if errors:
                raise invalid_arg(
                    f"failed to run warmup sample '{sample.name}': "
                    + "".join(f"{error}; " for error in errors)
                )


def _input(name: str, spec: Any, config: Any, model_dir: Path, rng: Any) -> InferInput:
    prefix = request_prefix("")
    dims = tuple(int(d) for d in spec.dims)
    if any(d < 0 for d in dims):
        raise invalid_arg(
            f"warmup setting expects all variable-size dimensions are specified for input '{name}'"
        )
    choice = spec.WhichOneof("input_data_type")
    if choice is None:
        raise invalid_arg(
            f"{prefix}warmup setting expects input '{name}' to have input_data_type set"
        )
    datatype = CONFIG_TO_WIRE.get(config_type_name(spec.data_type), "INVALID")
    shape = ((1,) if config.max_batch_size > 0 else ()) + dims
    count = element_count(shape)
    dtype = NUMPY_DTYPES.get(datatype)
    if dtype is None:
        raise invalid_arg(f"{prefix}warmup setting has invalid data type for input '{name}'")
    if choice == "input_data_file":
        data = _from_file(name, spec, datatype, shape, model_dir, config.name)
        return InferInput(name, datatype, shape, data, {})
    if datatype == BYTES:
        # Random strings are empty strings too, as in Triton.
        data = np.full(count, b"", dtype=object).reshape(shape)
    elif choice == "zero_data":
        data = np.zeros(shape, dtype=dtype)
    elif datatype == "BOOL":
        data = rng.integers(0, 2, size=shape).astype(np.bool_)
    else:
        data = np.frombuffer(rng.bytes(count * dtype.itemsize), dtype=dtype).reshape(shape)
    return InferInput(name, datatype, shape, data, {})


def _from_file(
    name: str, spec: Any, datatype: str, shape: tuple[int, ...], model_dir: Path, model: str
) -> np.ndarray:
    filename = spec.input_data_file
    path = model_dir / WARMUP_DIR / filename
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise invalid_arg(
            f"{request_prefix('')}failed to read warmup file '{path}': {exc.strerror}"
        ) from None
    if datatype == BYTES:
        return deserialize_bytes(content, shape, name, model)
    expected = element_count(shape) * NUMPY_DTYPES[datatype].itemsize
    if len(content) < expected:
        # Triton's message, with no space between the file name and "only".
        raise invalid_arg(
            f"{request_prefix('')}warmup setting expects {expected} bytes, but the data "
            f"provided from {filename}only has {len(content)} bytes"
        )
    return np.frombuffer(content[:expected], dtype=NUMPY_DTYPES[datatype]).reshape(shape)
