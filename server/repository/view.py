"""The frozen, hot-path view of a loaded model's configuration."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from server.tensors import CONFIG_TO_WIRE


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    datatype: str  # wire datatype, e.g. "FP32"
    dims: tuple[int, ...]  # without the batch dim
    optional: bool = False
    allow_ragged_batch: bool = False
    reshape: tuple[int, ...] | None = None
    labels: tuple[str, ...] = ()

    @property
    def variable(self) -> bool:
        return any(d < 0 for d in self.dims)


@dataclass(frozen=True, slots=True)
class ModelView:
    name: str
    version: str
    platform: str
    backend: str
    max_batch_size: int
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    decoupled: bool = False
    parameters: dict[str, str] = field(default_factory=dict)
    # Inputs whose shapes must match for requests to share a batch.
    shape_checked_inputs: tuple[str, ...] = ()
    # Worked out from ``inputs`` once; every request is checked against it.
    required_inputs: tuple[str, ...] = field(init=False, default=())
    # Worked out once for the Python backend, which hands both to every request.
    output_names: tuple[str, ...] = field(init=False, default=())
    version_number: int = field(init=False, default=-1)

    def __post_init__(self) -> None:
        required = tuple(name for name, spec in self.inputs.items() if not spec.optional)
        object.__setattr__(self, "required_inputs", required)
        object.__setattr__(self, "output_names", tuple(self.outputs))
        number = int(self.version) if self.version.isdigit() else -1
        object.__setattr__(self, "version_number", number)

    def metadata_shape(self, spec: TensorSpec) -> list[int]:
        dims = list(spec.dims)
        return [-1, *dims] if self.max_batch_size > 0 else dims


def build_view(config: Any, version: str, labels: dict[str, tuple[str, ...]]) -> ModelView:
    """Freeze a normalized ModelConfig into plain Python values."""

    def spec(tensor: Any, is_input: bool) -> TensorSpec:
        reshape = tuple(tensor.reshape.shape) if tensor.HasField("reshape") else None
        return TensorSpec(
            name=tensor.name,
            datatype=CONFIG_TO_WIRE.get(config_type_name(tensor.data_type), "INVALID"),
            dims=tuple(int(d) for d in tensor.dims),
            optional=bool(getattr(tensor, "optional", False)) if is_input else False,
            allow_ragged_batch=bool(getattr(tensor, "allow_ragged_batch", False))
            if is_input
            else False,
            reshape=reshape,
            labels=labels.get(tensor.name, ()),
        )

    inputs = {t.name: spec(t, True) for t in config.input}
    outputs = {t.name: spec(t, False) for t in config.output}
    checked = tuple(name for name, s in inputs.items() if s.variable and not s.allow_ragged_batch)
    return ModelView(
        name=config.name,
        version=version,
        platform=config.platform,
        backend=config.backend,
        max_batch_size=int(config.max_batch_size),
        inputs=inputs,
        outputs=outputs,
        decoupled=bool(config.model_transaction_policy.decoupled),
        parameters={k: v.string_value for k, v in config.parameters.items()},
        shape_checked_inputs=checked,
    )


def config_type_name(value: int) -> str:
    from server.protocol.generated import model_config_pb2

    return model_config_pb2.DataType.Name(value)
