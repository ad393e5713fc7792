"""The configuration checks Triton makes, with its messages: tensor shapes and reshapes,
batch inputs, ensemble scheduling, priority levels with ordering, and version policies
(tests/differential/test_config_checks_vs_triton.py compares the same cases with tritonserver)."""

from __future__ import annotations

import pytest
from google.protobuf import text_format

from server.errors import Code, ServerError
from server.protocol.generated import model_config_pb2 as mc
from server.repository import config as cfg
from server.repository.manager import select_versions

IO = """
input [ { name: "X" data_type: TYPE_FP32 %s } ]
output [ { name: "Y" data_type: TYPE_FP32 dims: [ 4 ] } ]
"""


def _config(text: str, max_batch_size: int = 0) -> mc.ModelConfig:
    config = text_format.Parse(text, mc.ModelConfig())
    config.name = "m"
    config.backend = "python"
    config.max_batch_size = max_batch_size
    return config


def _error(config: mc.ModelConfig) -> str:
    with pytest.raises(ServerError) as err:
        cfg.validate(config)
    assert err.value.code == Code.INVALID_ARG
    return err.value.message


@pytest.mark.parametrize(
    ("shape", "max_batch_size", "message"),
    [
        ("dims: [ ]", 4, "model input 'X' must specify 'dims' for m"),
        ("dims: [ ]", 0, "model input 'X' must specify 'dims' for m"),
        (
            "dims: [ -2 ]",
            0,
            "model input 'X' dimension must be integer >= 1, or -1 to indicate a "
            "variable-size dimension for m",
        ),
        (
            "dims: [ 1 ] reshape: { shape: [ ] }",
            0,
            "model input 'X' cannot have empty reshape for non-batching model for m",
        ),
        (
            "dims: [ 4 ] reshape: { shape: [ 0 ] }",
            0,
            "model input 'X' reshape dimensions must be integer >= 1, or -1 to indicate a "
            "variable-size dimension for m",
        ),
        (
            "dims: [ 4 ] reshape: { shape: [ 3 ] }",
            0,
            "model input 'X' has different size for dims and reshape for m",
        ),
        (
            "dims: [ 2 ] reshape: { shape: [ ] }",
            4,
            "model input 'X' has different size for dims and reshape for m",
        ),
        (
            "dims: [ -1 ] reshape: { shape: [ 4 ] }",
            0,
            "model input 'X' has different size for dims and reshape for m",
        ),
        (
            "dims: [ 2, -1, 3 ] reshape: { shape: [ 2, -1, -1, 3 ] }",
            0,
            "model input 'X' has different number of variable-size dimensions for dims and reshape for m",
        ),
        (
            "dims: [ 2, -1, 3 ] reshape: { shape: [ 3, -1, 2 ] }",
            0,
            "model input 'X' has different size for dims and reshape for m",
        ),
    ],
)
def test_shapes_are_checked_as_triton_checks_them(
    shape: str, max_batch_size: int, message: str
) -> None:
    assert _error(_config(IO % shape, max_batch_size)) == message


@pytest.mark.parametrize(
    ("shape", "max_batch_size"),
    [
        ("dims: [ 1 ] reshape: { shape: [ ] }", 4),
        ("dims: [ 2, 4, -1, 6 ] reshape: { shape: [ 8, -1, 1, 6 ] }", 0),
        ("dims: [ 2, 3 ] reshape: { shape: [ 6 ] }", 0),
        ("dims: [ -1 ]", 0),
    ],
)
def test_valid_shapes_pass(shape: str, max_batch_size: int) -> None:
    cfg.validate(_config(IO % shape, max_batch_size))


def test_duplicate_tensor_names_are_accepted_as_triton_accepts_them() -> None:
    config = _config(
        IO % "dims: [ 4 ]" + 'input [ { name: "X" data_type: TYPE_FP32 dims: [ 4 ] } ]'
    )
    cfg.validate(config)


def test_batch_input_sources_must_be_inputs() -> None:
    text = IO % "dims: [ 4 ]" + (
        'batch_input [ { kind: BATCH_ELEMENT_COUNT target_name: "N" data_type: TYPE_FP32 '
        'source_input: "NOPE" } ]'
    )
    assert _error(_config(text, 4)) == "unknown source input name 'NOPE' for m"


def test_ensemble_scheduling_needs_the_ensemble_platform() -> None:
    text = (
        IO % "dims: [ 4 ]"
        + 'ensemble_scheduling { step [ { model_name: "a" model_version: -1 } ] }'
    )
    assert _error(_config(text)) == (
        "ensemble scheduling cannot be set for model 'm' whose platform is not ensemble"
    )


def test_preserve_ordering_allows_one_priority_level() -> None:
    text = IO % "dims: [ 4 ]" + (
        "dynamic_batching { priority_levels: 2 default_priority_level: 1 preserve_ordering: true }"
    )
    assert _error(_config(text, 4)) == (
        "Only one priority level is allowed when 'preserve_ordering' is true for m"
    )


def test_latest_zero_versions_selects_none() -> None:
    config = _config(IO % "dims: [ 4 ]" + "version_policy: { latest: { num_versions: 0 } }")
    cfg.normalize(config, 0)
    assert config.version_policy.latest.num_versions == 0
    assert select_versions(config, {1: None, 2: None}) == {}  # type: ignore[dict-item]
    absent = _config(IO % "dims: [ 4 ]")
    cfg.normalize(absent, 0)
    assert select_versions(absent, {1: None, 2: None}) == {2: None}  # type: ignore[dict-item]
