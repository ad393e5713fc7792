"""Checks every request once against the model's frozen view, with Triton's messages."""

from __future__ import annotations

from server.errors import invalid_arg, unsupported
from server.repository.view import ModelView
from server.tensors import NUMPY_DTYPES, request_prefix
from server.types import InferRequest


def validate_request(request: InferRequest, view: ModelView) -> None:
    """Fill ``batch_size`` and raise INVALID_ARG on anything the model cannot take.

    The order of the checks, and which input a message names first, follow Triton's core:
    the requested outputs, the input count, unknown names, the batch dimension, then each
    input's datatype, shape and contents (Triton walks the inputs in its hash map's order,
    which for two inputs is the reverse of the request's), and last a required input left
    out of a request whose input count is in range, which Triton does not check."""
    # The count's wording is built only on the way to an error: this runs per request.
    name = view.name
    inputs = view.inputs
    # Triton's core settles the requested outputs before it looks at the inputs.
    if request.outputs is not None:
        for output in request.outputs:
            if output.name not in view.outputs:
                raise invalid_arg(f"unexpected inference output '{output.name}' for model '{name}'")
    given: set[str] = set()
    for tensor in request.inputs:
        if tensor.name in given:
            raise invalid_arg(
                f"{request_prefix(request.id)}input '{tensor.name}' already exists in request"
            )
        given.add(tensor.name)
    required = view.required_inputs
    missing = [n for n in required if n not in given]
    if len(request.inputs) > len(inputs) or len(request.inputs) < len(required):
        got = ",".join(f"'{t.name}'" for t in request.inputs[::-1])
        wanted = "[" + ",".join(f"'{n}'" for n in missing) + "]" if missing else "]"
        raise invalid_arg(
            f"{request_prefix(request.id)}expected {_expected(view)} but got "
            f"{len(request.inputs)} inputs for model '{name}'. Got input(s) [{got}], but "
            f"missing required input(s) {wanted}. Please provide all required input(s)."
        )
    for tensor in request.inputs:
        if tensor.name not in inputs:
            raise invalid_arg(f"unexpected inference input '{tensor.name}' for model '{name}'")
    ordered = request.inputs[::-1]
    prefix = request_prefix(request.id)
    batch = 0
    max_batch = view.max_batch_size
    if max_batch > 0:
        for tensor in ordered:
            if not tensor.shape:
                raise invalid_arg(
                    f"{prefix}input '{tensor.name}' has no shape but model requires batch "
                    f"dimension for '{name}'"
                )
            if batch == 0:
                batch = tensor.shape[0]
            elif tensor.shape[0] != batch:
                raise invalid_arg(
                    f"{prefix}input '{tensor.name}' batch size does not match other inputs for '{name}'"
                )
        if batch > max_batch:
            raise invalid_arg(
                f"{prefix}inference request batch-size must be <= {max_batch} for '{name}'"
            )
        if batch < 1 and request.inputs:
            raise invalid_arg(f"{prefix}inference request batch-size must be >= 1 for '{name}'")
    for tensor in ordered:
        spec = inputs[tensor.name]
        if tensor.datatype != spec.datatype:
            # Triton names a datatype it does not know '<invalid>'.
            shown = tensor.datatype if tensor.datatype in NUMPY_DTYPES else "<invalid>"
            raise invalid_arg(
                f"{prefix}inference input '{tensor.name}' data-type is '{shown}', but model "
                f"'{name}' expects '{spec.datatype}'"
            )
        shape = tensor.shape
        if shape and min(shape) < 0:
            raise invalid_arg(
                f"{prefix}All input dimensions should be specified for input '{tensor.name}' for model "
                f"'{name}', got {_fmt(shape)}"
            )
        rest = shape[1:] if max_batch > 0 else shape
        if not _dims_match(spec.dims, rest):
            _shape_error(prefix, tensor.name, name, view, spec.dims, shape)
        if tensor.content_error is not None:
            raise tensor.content_error
    if missing:
        # With the count in range, Triton's core does not look for a missing required input
        # (the model gets the request without it). It is refused here, after every check
        # Triton makes, so that a request Triton refuses is refused with Triton's words.
        raise invalid_arg(
            f"{prefix}expected {_expected(view)} but got {len(request.inputs)} inputs for model "
            f"'{name}'. Got input(s) ["
            + ",".join(f"'{t.name}'" for t in request.inputs)
            + "], but missing required input(s) ["
            + ",".join(f"'{n}'" for n in missing)
            + "]. Please provide all required input(s)."
        )
    request.batch_size = batch if batch > 1 else 1
    if view.decoupled and request.response_queue is None:
        raise unsupported("ModelInfer RPC doesn't support models with decoupled transaction policy")


def _expected(view: ModelView) -> str:
    """The input count a model expects, in Triton's words: a model with optional inputs
    words it as a range."""
    required, inputs = len(view.required_inputs), len(view.inputs)
    if required == inputs:
        return f"{inputs} inputs"
    return f"number of inputs between {required} and {inputs}"


def _dims_match(dims: tuple[int, ...], shape: tuple[int, ...]) -> bool:
    if dims == shape:
        return True
    if len(dims) != len(shape):
        return False
    return all(d == -1 or d == s for d, s in zip(dims, shape, strict=True))


def _fmt(shape: tuple[int, ...] | list[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def _shape_error(
    prefix: str,
    tensor: str,
    model: str,
    view: ModelView,
    dims: tuple[int, ...],
    shape: tuple[int, ...],
) -> None:
    expected = list(dims)
    message = (
        f"{prefix}unexpected shape for input '{tensor}' for model '{model}'. Expected "
        f"{_fmt(([-1] + expected) if view.max_batch_size > 0 else expected)}, got {_fmt(shape)}. "
    )
    if view.max_batch_size > 0:
        message += (
            "NOTE: Setting a non-zero max_batch_size in the model config requires a batch "
            "dimension to be prepended to each input shape. If you want to specify the full "
            "shape including the batch dim in your input dims config, try setting "
            "max_batch_size to zero. See the model configuration docs for more info on "
            "max_batch_size."
        )
    raise invalid_arg(message)
