"""The object a model's static ``auto_complete_config(auto_complete_model_config)`` edits.

The model receives the configuration as Triton's JSON dict and edits it through these
methods; whatever it returns becomes the model's configuration.
"""

from __future__ import annotations

import copy
from typing import Any

from server.tensors import CONFIG_TO_WIRE

_TENSOR_KEYS = {
    "name",
    "data_type",
    "dims",
    "optional",
    "format",
    "reshape",
    "label_filename",
    "is_shape_tensor",
    "allow_ragged_batch",
    "is_non_linear_format_io",
}


class ModelConfig:
    def __init__(self, model_config: dict[str, Any]) -> None:
        self._model_config = copy.deepcopy(model_config)

    def as_dict(self) -> dict[str, Any]:
        return self._model_config

    def _name(self) -> str:
        return str(self._model_config.get("name", ""))

    def set_max_batch_size(self, max_batch_size: int) -> None:
        if (
            not isinstance(max_batch_size, int)
            or isinstance(max_batch_size, bool)
            or max_batch_size < 0
        ):
            raise ValueError(
                f"max_batch_size must be a non-negative integer for model '{self._name()}', "
                f"got {max_batch_size!r}"
            )
        current = int(self._model_config.get("max_batch_size", 0) or 0)
        if current not in (0, max_batch_size):
            raise ValueError(
                f"configuration specified max_batch_size {current}, but in auto-complete-config "
                f"function for model '{self._name()}' specified max_batch_size {max_batch_size}"
            )
        self._model_config["max_batch_size"] = max_batch_size

    def set_dynamic_batching(self) -> None:
        if self._model_config.get("sequence_batching"):
            raise ValueError(
                f"configuration of model '{self._name()}' specified sequence batching, which "
                "cannot be combined with dynamic batching"
            )
        self._model_config.setdefault("dynamic_batching", {})

    def set_model_transaction_policy(self, transaction_policy_dict: dict[str, Any]) -> None:
        if not isinstance(transaction_policy_dict, dict):
            raise ValueError(
                "the model transaction policy must be a dict, e.g. {'decoupled': True}"
            )
        unknown = set(transaction_policy_dict) - {"decoupled"}
        if unknown:
            raise ValueError(
                f"unknown model transaction policy field(s): {', '.join(sorted(unknown))}"
            )
        policy = self._model_config.setdefault("model_transaction_policy", {})
        policy["decoupled"] = bool(transaction_policy_dict.get("decoupled", False))

    def add_input(self, input: dict[str, Any]) -> None:
        self._add_tensor("input", input)

    def add_output(self, output: dict[str, Any]) -> None:
        self._add_tensor("output", output)

    def _add_tensor(self, kind: str, tensor: dict[str, Any]) -> None:
        if not isinstance(tensor, dict):
            raise ValueError(f"model {kind} must be a dict, got {type(tensor).__name__}")
        unknown = set(tensor) - _TENSOR_KEYS
        if unknown:
            raise ValueError(
                f"model {kind} '{tensor.get('name', '')}' of model '{self._name()}' has unknown "
                f"field(s): {', '.join(sorted(unknown))}"
            )
        for key in ("name", "data_type", "dims"):
            if key not in tensor:
                raise ValueError(
                    f"model {kind} of model '{self._name()}' must specify '{key}': {tensor!r}"
                )
        data_type = tensor["data_type"]
        if data_type not in CONFIG_TO_WIRE:
            raise ValueError(
                f"model {kind} '{tensor['name']}' of model '{self._name()}' has unknown data_type "
                f"'{data_type}'"
            )
        entries = self._model_config.setdefault(kind, [])
        for existing in entries:
            if existing.get("name") != tensor["name"]:
                continue
            self._merge(kind, existing, tensor)
            return
        entry = copy.deepcopy(tensor)
        entry["dims"] = [int(d) for d in entry["dims"]]
        entries.append(entry)

    def _merge(self, kind: str, existing: dict[str, Any], tensor: dict[str, Any]) -> None:
        name = tensor["name"]
        old_type = existing.get("data_type", "TYPE_INVALID")
        if old_type not in ("", "TYPE_INVALID") and old_type != tensor["data_type"]:
            raise ValueError(
                f"unable to override {old_type} data_type of model {kind} '{name}' with "
                f"{tensor['data_type']} in auto-complete-config function for model '{self._name()}'"
            )
        old_dims = [int(d) for d in existing.get("dims", [])]
        new_dims = [int(d) for d in tensor["dims"]]
        if old_dims and old_dims != new_dims:
            raise ValueError(
                f"model '{self._name()}', tensor '{name}': the model expects dims {new_dims} "
                f"but the model configuration specifies dims {old_dims}"
            )
        existing["data_type"] = tensor["data_type"]
        existing["dims"] = new_dims
        for key, value in tensor.items():
            if key not in ("name", "data_type", "dims"):
                existing.setdefault(key, value)
