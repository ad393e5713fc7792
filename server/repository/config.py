"""Model configuration pipeline: parse -> fill backend fields -> auto-complete -> normalize
-> validate. Every step works on the protobuf ``ModelConfig``, the one source of truth."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from google.protobuf import json_format, text_format

from server.errors import Code, ServerError, invalid_arg
from server.protocol.generated import model_config_pb2 as mc

log = logging.getLogger(__name__)

ModelConfig = mc.ModelConfig

# platform -> (backend, default file name)
PLATFORMS: dict[str, tuple[str, str]] = {
    "onnxruntime_onnx": ("onnxruntime", "model.onnx"),
    "pytorch_libtorch": ("pytorch", "model.pt"),
    "libtorch": ("pytorch", "model.pt"),
    "torch_aoti": ("pytorch", "model.pt2"),
    "tensorrt_plan": ("tensorrt", "model.plan"),
    "tensorflow_savedmodel": ("tensorflow", "model.savedmodel"),
    "tensorflow_graphdef": ("tensorflow", "model.graphdef"),
    "ensemble": ("", ""),
}
# backend -> (platform reported in metadata, default file name)
BACKENDS: dict[str, tuple[str, str]] = {
    "onnxruntime": ("onnxruntime_onnx", "model.onnx"),
    "pytorch": ("pytorch_libtorch", "model.pt"),
    "python": ("", "model.py"),
    "tensorrt": ("tensorrt_plan", "model.plan"),
    "openvino": ("", "model.xml"),
}
_FILE_TO_BACKEND = {"model.onnx": "onnxruntime", "model.py": "python", "model.pt": "pytorch"}

# Fields the server parses and keeps but does not act on yet; worth a log line when set.
_NOT_ACTED_ON = (
    "sequence_batching",
    "ensemble_scheduling",
    "batch_input",
    "batch_output",
    "model_operations",
    "model_repository_agents",
    "response_cache",
    "cc_model_filenames",
    "metric_tags",
)

AutoCompleter = Callable[[Any, Path], None]


class ConfigReadError(ServerError):
    """The configuration could not be read at all (syntax, unknown field, wrong name)."""

    def __init__(self, message: str) -> None:
        super().__init__(Code.INVALID_ARG, message)


def version_dirs(model_dir: Path) -> dict[int, Path]:
    """Numeric version directories ("0" included); names that are not numbers, or that have
    leading zeros, are ignored."""
    found: dict[int, Path] = {}
    try:
        entries = list(os.scandir(model_dir))
    except OSError:
        return found
    for entry in entries:
        canonical = entry.name.isdigit() and str(int(entry.name)) == entry.name
        if entry.is_dir() and canonical:
            found[int(entry.name)] = Path(entry.path)
    return found


def parse_config_text(text: str, source: str) -> Any:
    config = ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise ConfigReadError(f"failed to parse model configuration {source}: {exc}") from None
    return config


def parse_config_json(text: str) -> Any:
    config = ModelConfig()
    try:
        json_format.Parse(text, config)
    except (json_format.ParseError, ValueError) as exc:
        raise ConfigReadError(f"failed to parse model configuration override: {exc}") from None
    return config


def read_config(model_dir: Path, config_name: str = "") -> Any | None:
    candidates = []
    if config_name:
        candidates.append(model_dir / "configs" / f"{config_name}.pbtxt")
    candidates.append(model_dir / "config.pbtxt")
    for path in candidates:
        if path.is_file():
            return parse_config_text(path.read_text(), str(path))
    return None


def fill_backend_fields(config: Any, name: str, model_dir: Path) -> None:
    """Fill whichever of platform, backend and default_model_filename is missing."""
    if config.name and config.name != name:
        raise ConfigReadError(
            f"unexpected directory name '{name}' for model '{config.name}', "
            "directory name must equal model name"
        )
    config.name = name
    if not config.backend and config.platform in PLATFORMS:
        config.backend = PLATFORMS[config.platform][0]
    if config.backend and not config.platform and config.backend in BACKENDS:
        config.platform = BACKENDS[config.backend][0]
    if not config.backend and not config.platform:
        for version_dir in sorted(version_dirs(model_dir).values(), reverse=True):
            for filename, backend in _FILE_TO_BACKEND.items():
                if (version_dir / filename).exists():
                    config.backend = backend
                    config.platform = BACKENDS[backend][0]
                    break
            if config.backend:
                break
    if config.platform == "libtorch":
        config.platform = "pytorch_libtorch"
    if not config.default_model_filename:
        if config.platform in PLATFORMS and PLATFORMS[config.platform][1]:
            config.default_model_filename = PLATFORMS[config.platform][1]
        elif config.backend in BACKENDS:
            config.default_model_filename = BACKENDS[config.backend][1]


def normalize(config: Any, gpu_count: int) -> None:
    """Apply the defaults Triton applies, so GET .../config shows the same values."""
    if not config.HasField("version_policy"):
        config.version_policy.latest.num_versions = 1
    if config.HasField("dynamic_batching") and config.max_batch_size > 0:
        if not config.dynamic_batching.preferred_batch_size:
            config.dynamic_batching.preferred_batch_size.append(config.max_batch_size)
    if not config.optimization.HasField("input_pinned_memory"):
        config.optimization.input_pinned_memory.enable = True
    if not config.optimization.HasField("output_pinned_memory"):
        config.optimization.output_pinned_memory.enable = True
    if config.platform == "ensemble":
        return
    if not config.instance_group:
        # Triton names the group it adds after the model; groups a user wrote get "<model>_<i>".
        config.instance_group.add().name = config.name
    for index, group in enumerate(config.instance_group):
        if not group.name:
            group.name = f"{config.name}_{index}"
        if group.kind == mc.ModelInstanceGroup.KIND_AUTO:
            if gpu_count > 0 and all(g < gpu_count for g in group.gpus):
                group.kind = mc.ModelInstanceGroup.KIND_GPU
            else:
                group.kind = mc.ModelInstanceGroup.KIND_CPU
        if group.kind == mc.ModelInstanceGroup.KIND_GPU and not group.gpus:
            group.gpus.extend(range(gpu_count))
        if group.count < 1:
            on_cpu = group.kind == mc.ModelInstanceGroup.KIND_CPU
            group.count = 2 if on_cpu and config.backend == "onnxruntime" else 1


def validate(config: Any) -> None:
    name = config.name
    if config.max_batch_size < 0:
        raise invalid_arg(f"'max_batch_size' must be non-negative value for {name}")
    if not config.input and config.platform != "ensemble" and config.backend != "python":
        raise invalid_arg(f"model input must be specified for {name}")
    for kind, tensors in (("input", config.input), ("output", config.output)):
        for tensor in tensors:
            if not tensor.name:
                raise invalid_arg(f"model {kind} must specify 'name' for {name}")
            if tensor.data_type == mc.TYPE_INVALID:
                raise invalid_arg(
                    f"model {kind} '{tensor.name}' must specify 'data_type' for {name}"
                )
            _validate_shape(tensor, f"model {kind} '{tensor.name}' ", config)
            if tensor.is_shape_tensor:
                raise invalid_arg(
                    f"shape tensors are only supported for TensorRT platform for {name}"
                )
    for tensor in config.input:
        if tensor.format in (mc.ModelInput.FORMAT_NHWC, mc.ModelInput.FORMAT_NCHW):
            if len(tensor.dims) != 3:
                raise invalid_arg(f"model input NHWC/NCHW require 3 dims for {name}")
    _validate_batch_io(config)
    if config.HasField("ensemble_scheduling") and config.platform != "ensemble":
        raise invalid_arg(
            f"ensemble scheduling cannot be set for model '{name}' whose platform is not ensemble"
        )
    if config.HasField("dynamic_batching"):
        _validate_dynamic_batching(config)
    for group in config.instance_group:
        if group.count < 1:
            raise invalid_arg(f"instance group {group.name} of model {name} must have count >= 1")


def _validate_batch_io(config: Any) -> None:
    """Triton's checks of ``batch_input`` and ``batch_output``."""
    name = config.name
    inputs = {tensor.name for tensor in config.input}
    outputs = {tensor.name for tensor in config.output}
    # Inputs first, then outputs, as Triton walks them; only inputs have a data type to check
    # and only outputs have targets.
    entries = [
        ("batch input", mc.BatchInput.Kind.Name(b.kind), b.source_input, b.data_type, ())
        for b in config.batch_input
    ] + [
        ("batch output", mc.BatchOutput.Kind.Name(b.kind), b.source_input, None, b.target_name)
        for b in config.batch_output
    ]
    for what, kind, sources, datatype, targets in entries:
        if len(sources) != 1:
            raise invalid_arg(
                f"{what} kind '{kind}' expects 1 source input, got {len(sources)} for {name}"
            )
        if datatype is not None and datatype not in (mc.TYPE_INT32, mc.TYPE_FP32):
            raise invalid_arg(f"batch input data type must be TYPE_INT32 or TYPE_FP32 for {name}")
        if sources[0] not in inputs:
            raise invalid_arg(f"unknown source input name '{sources[0]}' for {name}")
        seen: set[str] = set()
        for target in targets:
            if target not in outputs:
                raise invalid_arg(f"unknown target output name '{target}' for {name}")
            if target in seen:
                raise invalid_arg(
                    f"target output name '{target}' can only be specified once for {name}"
                )
            seen.add(target)


def _validate_shape(tensor: Any, prefix: str, config: Any) -> None:
    """Triton's checks of one tensor's ``dims`` and ``reshape``; ``prefix`` names the tensor."""
    suffix = f" for {config.name}"
    if not tensor.dims:
        raise invalid_arg(f"{prefix}must specify 'dims'{suffix}")
    has_reshape = tensor.HasField("reshape")
    reshape = list(tensor.reshape.shape)
    if has_reshape and not reshape and config.max_batch_size == 0:
        raise invalid_arg(f"{prefix}cannot have empty reshape for non-batching model{suffix}")
    variable = "to indicate a variable-size dimension"
    if any(dim < 1 and dim != -1 for dim in tensor.dims):
        raise invalid_arg(f"{prefix}dimension must be integer >= 1, or -1 {variable}{suffix}")
    if not has_reshape:
        return
    if any(dim < 1 and dim != -1 for dim in reshape):
        raise invalid_arg(
            f"{prefix}reshape dimensions must be integer >= 1, or -1 {variable}{suffix}"
        )
    # Both shapes hold as many elements, or both have variable-size dimensions; an empty
    # reshape takes dims of one element.
    dims_count, reshape_count = _element_count(tensor.dims), _element_count(reshape)
    if dims_count != reshape_count and (reshape_count != 0 or dims_count != 1):
        raise invalid_arg(f"{prefix}has different size for dims and reshape{suffix}")
    if dims_count == -1:
        # Runs of fixed dimensions between variable ones are compared one by one, so
        # [2, 4, -1, 6] may become [8, -1, 1, 6].
        dims_runs, reshape_runs = _runs(tensor.dims), _runs(reshape)
        if len(dims_runs) != len(reshape_runs):
            raise invalid_arg(
                f"{prefix}has different number of variable-size dimensions for dims and "
                f"reshape{suffix}"
            )
        if dims_runs != reshape_runs:
            raise invalid_arg(f"{prefix}has different size for dims and reshape{suffix}")


def _element_count(shape: Any) -> int:
    """-1 when a dimension is variable, 0 for no dimensions, else the product."""
    if any(dim == -1 for dim in shape):
        return -1
    return math.prod(shape) if len(shape) else 0


def _runs(shape: Any) -> list[int]:
    """The element counts of the runs of fixed dimensions that -1 dimensions separate."""
    runs, count = [], 1
    for dim in shape:
        if dim == -1:
            runs.append(count)
            count = 1
        else:
            count *= dim
    runs.append(count)
    return runs


# Triton's --min-supported-compute-capability default, which its messages quote.
MIN_COMPUTE_CAPABILITY = 6.0


def validate_instance_groups(config: Any, gpu_count: int) -> None:
    """Triton's checks of normalized instance groups against the GPUs this server sees."""
    name = config.name
    for group in config.instance_group:
        prefix = f"instance group {group.name} of model {name}"
        if group.kind == mc.ModelInstanceGroup.KIND_GPU:
            if not group.gpus:
                raise invalid_arg(f"{prefix} has kind KIND_GPU but no GPUs are available")
            for gpu in group.gpus:
                if not 0 <= gpu < gpu_count:
                    raise invalid_arg(
                        f"{prefix} specifies invalid or unsupported gpu id {gpu}. GPUs with at "
                        "least the minimum required CUDA compute compatibility of "
                        f"{MIN_COMPUTE_CAPABILITY:.6f} are: "
                        + ", ".join(str(index) for index in range(gpu_count))
                    )
        elif group.gpus:
            kind = mc.ModelInstanceGroup.Kind.Name(group.kind)
            raise invalid_arg(f"{prefix} has kind {kind} but specifies one or more GPUs")
        if group.profile:
            # Triton's message runs the platform into the next word; kept as it is.
            raise invalid_arg(
                f"{prefix} and platform {config.platform}specifies profile field which is only "
                "supported for TensorRT models"
            )


def _validate_dynamic_batching(config: Any) -> None:
    name = config.name
    batching = config.dynamic_batching
    for size in batching.preferred_batch_size:
        if size < 1:
            raise invalid_arg(f"dynamic batching preferred size must be positive for {name}")
        if size > config.max_batch_size:
            raise invalid_arg(
                f"dynamic batching preferred size must be <= max batch size for {name}"
            )
    levels = batching.priority_levels
    if levels > 0 and not 1 <= batching.default_priority_level <= levels:
        raise invalid_arg(f"default priority level must be in range [1, {levels}] for {name}")
    for level in batching.priority_queue_policy:
        if not 1 <= level <= levels:
            raise invalid_arg(
                f"priority queue policy must have priority level in range [1, {levels}] for {name}"
            )
    if batching.preserve_ordering:
        if levels > 1:
            raise invalid_arg(
                f"Only one priority level is allowed when 'preserve_ordering' is true for {name}"
            )
        policies = [batching.default_queue_policy, *batching.priority_queue_policy.values()]
        delay = mc.ModelQueuePolicy.DELAY
        if any(p.default_timeout_microseconds and p.timeout_action == delay for p in policies):
            raise invalid_arg(
                "Queue policy can not have DELAY as timeout action when 'preserve_ordering' is "
                f"true for {name}"
            )


def log_unused_fields(config: Any) -> None:
    for field_name in _NOT_ACTED_ON:
        if _is_set(config, field_name):
            log.warning(
                "model '%s': configuration field '%s' is accepted but not acted on by this server",
                config.name,
                field_name,
            )


def _is_set(config: Any, field_name: str) -> bool:
    descriptor = config.DESCRIPTOR.fields_by_name[field_name]
    if descriptor.is_repeated:
        return len(getattr(config, field_name)) > 0
    if descriptor.message_type is not None:
        return config.HasField(field_name)
    return bool(getattr(config, field_name))


def load_model_config(
    model_dir: Path,
    name: str,
    *,
    override: Any | None = None,
    autocomplete: AutoCompleter | None = None,
    gpu_count: int = 0,
    config_name: str = "",
) -> Any:
    """Run the whole pipeline for one model directory; raise ServerError on any failure."""
    config = override if override is not None else read_config(model_dir, config_name)
    if config is None:
        config = ModelConfig()
    fill_backend_fields(config, name, model_dir)
    if autocomplete is not None:
        try:
            autocomplete(config, model_dir)
        except ServerError:
            raise
        except Exception as exc:  # a framework's own error while reading the model file
            raise invalid_arg(
                f"auto-complete of the configuration of '{name}' failed: {exc}"
            ) from None
    normalize(config, gpu_count)
    validate(config)
    validate_instance_groups(config, gpu_count)
    return config


def config_to_json_dict(config: Any) -> dict[str, Any]:
    """The config as Triton serves it: snake_case, defaults printed, enums as names,
    and the 64-bit integer fields as JSON numbers rather than strings."""
    as_dict = json_format.MessageToDict(
        config,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
    )
    _int64_to_numbers(config.DESCRIPTOR, as_dict)
    return as_dict


_INT64_TYPES = {
    mc.ModelConfig.DESCRIPTOR.fields_by_name["max_batch_size"].TYPE_INT64,
    mc.ModelConfig.DESCRIPTOR.fields_by_name["max_batch_size"].TYPE_UINT64,
    mc.ModelConfig.DESCRIPTOR.fields_by_name["max_batch_size"].TYPE_SINT64,
    mc.ModelConfig.DESCRIPTOR.fields_by_name["max_batch_size"].TYPE_FIXED64,
    mc.ModelConfig.DESCRIPTOR.fields_by_name["max_batch_size"].TYPE_SFIXED64,
}


def _int64_to_numbers(descriptor: Any, data: dict[str, Any]) -> None:
    """Walk the dict beside its message descriptor and turn 64-bit integer strings into ints."""
    for key, value in data.items():
        field = descriptor.fields_by_name.get(key)
        if field is None:
            continue
        if field.message_type is not None:
            entry = field.message_type
            if entry.GetOptions().map_entry:
                value_field = entry.fields_by_name["value"]
                if value_field.message_type is not None:
                    for item in value.values():
                        _int64_to_numbers(value_field.message_type, item)
                elif value_field.type in _INT64_TYPES:
                    for map_key in value:
                        value[map_key] = int(value[map_key])
            elif isinstance(value, list):
                for item in value:
                    _int64_to_numbers(entry, item)
            else:
                _int64_to_numbers(entry, value)
        elif field.type in _INT64_TYPES:
            data[key] = [int(v) for v in value] if isinstance(value, list) else int(value)
