"""The configuration checks Triton makes, with its messages: tensor shapes, reshapes and
formats, shape tensors, batch inputs and outputs, ensemble scheduling, profiles, priority
levels and queue policies with ordering, version policies and version directories
(tests/differential/test_config_checks_vs_triton.py compares the same cases with tritonserver)."""

from __future__ import annotations

from pathlib import Path

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


BATCH_IO = IO % "dims: [ 4 ]"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            'batch_input [ { kind: BATCH_ELEMENT_COUNT target_name: "N" data_type: TYPE_INT32 '
            'source_input: [ "X", "X" ] } ]',
            "batch input kind 'BATCH_ELEMENT_COUNT' expects 1 source input, got 2 for m",
        ),
        (
            'batch_input [ { kind: BATCH_ELEMENT_COUNT target_name: "N" data_type: TYPE_FP64 '
            'source_input: "X" } ]',
            "batch input data type must be TYPE_INT32 or TYPE_FP32 for m",
        ),
        (
            'batch_output [ { target_name: [ "NOPE" ] kind: BATCH_SCATTER_WITH_INPUT_SHAPE '
            'source_input: [ "X" ] } ]',
            "unknown target output name 'NOPE' for m",
        ),
        (
            'batch_output [ { target_name: [ "Y", "Y" ] kind: BATCH_SCATTER_WITH_INPUT_SHAPE '
            'source_input: [ "X" ] } ]',
            "target output name 'Y' can only be specified once for m",
        ),
        (
            'batch_output [ { target_name: [ "Y" ] kind: BATCH_SCATTER_WITH_INPUT_SHAPE '
            'source_input: [ "Z" ] } ]',
            "unknown source input name 'Z' for m",
        ),
    ],
)
def test_batch_inputs_and_outputs_are_checked(extra: str, message: str) -> None:
    assert _error(_config(BATCH_IO + extra, 4)) == message


def test_tensor_formats_and_shape_tensors() -> None:
    nhwc = _config(IO % "dims: [ 2, 2 ] format: FORMAT_NHWC")
    assert _error(nhwc) == "model input NHWC/NCHW require 3 dims for m"
    cfg.validate(_config(IO % "dims: [ 2, 2, 3 ] format: FORMAT_NCHW"))
    shape = _config(IO % "dims: [ 2 ] is_shape_tensor: true")
    assert _error(shape) == "shape tensors are only supported for TensorRT platform for m"


def test_profiles_belong_to_tensorrt() -> None:
    config = _config(BATCH_IO + 'instance_group [ { name: "g" kind: KIND_CPU profile: [ "0" ] } ]')
    with pytest.raises(ServerError) as err:
        cfg.validate_instance_groups(config, 0)
    assert err.value.message == (
        "instance group g of model m and platform specifies profile field which is only "
        "supported for TensorRT models"
    )


def test_preserve_ordering_refuses_delay_policies() -> None:
    text = BATCH_IO + (
        "dynamic_batching { preserve_ordering: true priority_levels: 1 default_priority_level: 1 "
        "priority_queue_policy { key: 1 value: { timeout_action: DELAY "
        "default_timeout_microseconds: 5 } } }"
    )
    assert _error(_config(text, 4)) == (
        "Queue policy can not have DELAY as timeout action when 'preserve_ordering' is true for m"
    )


def test_preferred_sizes_need_batching() -> None:
    text = BATCH_IO + "dynamic_batching { preferred_batch_size: [ 2 ] }"
    assert _error(_config(text, 0)) == (
        "dynamic batching preferred size must be <= max batch size for m"
    )


def test_version_directories(tmp_path: Path) -> None:
    for name in ("0", "3", "01", "v2", "10"):
        (tmp_path / name).mkdir()
    (tmp_path / "7").write_text("a file, not a directory")
    assert sorted(cfg.version_dirs(tmp_path)) == [0, 3, 10]
