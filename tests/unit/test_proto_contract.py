"""Our .proto files must be wire-identical to Triton's.

The oracle is the set of descriptors compiled into tritonclient. Every message,
field, enum value and rpc it defines must exist in our protos with the same
full name, number, type, label, oneof and streaming flags. Anything we define
beyond it must be one of the later additions listed in NEWER_THAN_ORACLE, with
exactly the facts given there, so the protos can neither drift nor grow by
accident.
"""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Iterable
from concurrent import futures
from pathlib import Path
from types import ModuleType

import grpc
import grpc_tools
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.grpc.model_config_pb2 as oracle_config
import tritonclient.grpc.service_pb2 as oracle_service
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, text_format
from grpc_tools import protoc

from server.protocol.generated import (
    _pool,
    grpc_service_pb2,
    grpc_service_pb2_grpc,
    health_pb2,
    health_pb2_grpc,
    model_config_pb2,
)

REPO = Path(__file__).resolve().parents[2]
PROTO_DIR = REPO / "proto"
PROTO_FILES = ("model_config.proto", "grpc_service.proto", "health.proto")

F = descriptor_pb2.FieldDescriptorProto
Facts = dict[tuple[str, str], tuple[object, ...]]

OPTIONAL, REPEATED = F.LABEL_OPTIONAL, F.LABEL_REPEATED
DURATION = ".inference.StatisticDuration"

# Published by Triton after tritonclient 2.41: (number, type, label, type name, oneof).
# tritonclient 2.73, which the tests install, defines them too (with these facts); the
# list keeps the contract checkable against an older client's descriptors.
NEWER_THAN_ORACLE: Facts = {
    ("field", "inference.ModelInput.is_non_linear_format_io"): (9, F.TYPE_BOOL, OPTIONAL, "", ""),
    ("field", "inference.ModelOutput.is_non_linear_format_io"): (7, F.TYPE_BOOL, OPTIONAL, "", ""),
    ("field", "inference.ModelEnsembling.max_inflight_requests"): (
        2,
        F.TYPE_UINT32,
        OPTIONAL,
        "",
        "",
    ),
    ("field", "inference.ModelConfig.runtime"): (25, F.TYPE_STRING, OPTIONAL, "", ""),
    ("field", "inference.ModelConfig.model_metrics"): (
        26,
        F.TYPE_MESSAGE,
        OPTIONAL,
        ".inference.ModelMetrics",
        "",
    ),
    ("message", "inference.ModelMetrics"): (False,),
    ("field", "inference.ModelMetrics.metric_control"): (
        1,
        F.TYPE_MESSAGE,
        REPEATED,
        ".inference.ModelMetrics.MetricControl",
        "",
    ),
    ("message", "inference.ModelMetrics.MetricControl"): (False,),
    ("field", "inference.ModelMetrics.MetricControl.metric_identifier"): (
        1,
        F.TYPE_MESSAGE,
        OPTIONAL,
        ".inference.ModelMetrics.MetricControl.MetricIdentifier",
        "",
    ),
    ("field", "inference.ModelMetrics.MetricControl.histogram_options"): (
        2,
        F.TYPE_MESSAGE,
        OPTIONAL,
        ".inference.ModelMetrics.MetricControl.HistogramOptions",
        "metric_options",
    ),
    ("message", "inference.ModelMetrics.MetricControl.MetricIdentifier"): (False,),
    ("field", "inference.ModelMetrics.MetricControl.MetricIdentifier.family"): (
        1,
        F.TYPE_STRING,
        OPTIONAL,
        "",
        "",
    ),
    ("message", "inference.ModelMetrics.MetricControl.HistogramOptions"): (False,),
    ("field", "inference.ModelMetrics.MetricControl.HistogramOptions.buckets"): (
        1,
        F.TYPE_DOUBLE,
        REPEATED,
        "",
        "",
    ),
    ("message", "inference.InferResponseStatistics"): (False,),
    **{
        ("field", f"inference.InferResponseStatistics.{name}"): (
            number,
            F.TYPE_MESSAGE,
            OPTIONAL,
            DURATION,
            "",
        )
        for number, name in enumerate(
            ("compute_infer", "compute_output", "success", "fail", "empty_response", "cancel"),
            start=1,
        )
    },
    ("field", "inference.ModelStatistics.response_stats"): (
        9,
        F.TYPE_MESSAGE,
        REPEATED,
        ".inference.ModelStatistics.ResponseStatsEntry",
        "",
    ),
    ("message", "inference.ModelStatistics.ResponseStatsEntry"): (True,),
    ("field", "inference.ModelStatistics.ResponseStatsEntry.key"): (
        1,
        F.TYPE_STRING,
        OPTIONAL,
        "",
        "",
    ),
    ("field", "inference.ModelStatistics.ResponseStatsEntry.value"): (
        2,
        F.TYPE_MESSAGE,
        OPTIONAL,
        ".inference.InferResponseStatistics",
        "",
    ),
}

# The standard grpc.health.v1 service; tritonclient ships no copy of it.
HEALTH_FACTS: Facts = {
    ("file", "health.proto"): ("grpc.health.v1", "proto3", ()),
    ("message", "grpc.health.v1.HealthCheckRequest"): (False,),
    ("field", "grpc.health.v1.HealthCheckRequest.service"): (1, F.TYPE_STRING, OPTIONAL, "", ""),
    ("message", "grpc.health.v1.HealthCheckResponse"): (False,),
    ("field", "grpc.health.v1.HealthCheckResponse.status"): (
        1,
        F.TYPE_ENUM,
        OPTIONAL,
        ".grpc.health.v1.HealthCheckResponse.ServingStatus",
        "",
    ),
    ("enum", "grpc.health.v1.HealthCheckResponse.ServingStatus"): (),
    ("enum_value", "grpc.health.v1.HealthCheckResponse.ServingStatus.UNKNOWN"): (0,),
    ("enum_value", "grpc.health.v1.HealthCheckResponse.ServingStatus.SERVING"): (1,),
    ("enum_value", "grpc.health.v1.HealthCheckResponse.ServingStatus.NOT_SERVING"): (2,),
    ("enum_value", "grpc.health.v1.HealthCheckResponse.ServingStatus.SERVICE_UNKNOWN"): (3,),
    ("service", "grpc.health.v1.Health"): (),
    ("rpc", "grpc.health.v1.Health.Check"): (
        ".grpc.health.v1.HealthCheckRequest",
        ".grpc.health.v1.HealthCheckResponse",
        False,
        False,
    ),
}


def _enum_facts(enums: Iterable[descriptor_pb2.EnumDescriptorProto], scope: str) -> Facts:
    facts: Facts = {}
    for enum in enums:
        full = f"{scope}.{enum.name}"
        facts[("enum", full)] = ()
        for value in enum.value:
            facts[("enum_value", f"{full}.{value.name}")] = (value.number,)
    return facts


def _message_facts(messages: Iterable[descriptor_pb2.DescriptorProto], scope: str) -> Facts:
    facts: Facts = {}
    for message in messages:
        full = f"{scope}.{message.name}"
        facts[("message", full)] = (message.options.map_entry,)
        for field in message.field:
            oneof = (
                message.oneof_decl[field.oneof_index].name if field.HasField("oneof_index") else ""
            )
            facts[("field", f"{full}.{field.name}")] = (
                field.number,
                field.type,
                field.label,
                field.type_name,
                oneof,
            )
        facts.update(_enum_facts(message.enum_type, full))
        facts.update(_message_facts(message.nested_type, full))
    return facts


def flatten(file: descriptor_pb2.FileDescriptorProto) -> Facts:
    """Every wire-relevant fact of one file, keyed by kind and full name."""
    facts: Facts = {("file", file.name): (file.package, file.syntax, tuple(file.dependency))}
    facts.update(_enum_facts(file.enum_type, file.package))
    facts.update(_message_facts(file.message_type, file.package))
    for service in file.service:
        full = f"{file.package}.{service.name}"
        facts[("service", full)] = ()
        for method in service.method:
            facts[("rpc", f"{full}.{method.name}")] = (
                method.input_type,
                method.output_type,
                method.client_streaming,
                method.server_streaming,
            )
    return facts


def violations(oracle: Facts, ours: Facts, newer: Facts) -> list[str]:
    problems = [
        f"{kind} {name}: ours {ours.get((kind, name), 'missing')}, oracle {want}"
        for (kind, name), want in oracle.items()
        if ours.get((kind, name)) != want
    ]
    for key in sorted(ours.keys() - oracle.keys()):
        if key not in newer:
            problems.append(f"{key[0]} {key[1]}: not defined by Triton")
        elif ours[key] != newer[key]:
            problems.append(f"{key[0]} {key[1]}: ours {ours[key]}, expected {newer[key]}")
    return problems


def _as_proto(file: object) -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto()
    file.CopyToProto(proto)  # type: ignore[attr-defined]
    return proto


@pytest.fixture(scope="module")
def fresh_pool(tmp_path_factory: pytest.TempPathFactory) -> descriptor_pool.DescriptorPool:
    """Our .proto sources compiled by protoc and loaded into a pool of their own."""
    out = tmp_path_factory.mktemp("protoc") / "contract.pb"
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    status = protoc.main(
        [
            "protoc",
            f"-I{PROTO_DIR}",
            f"-I{well_known}",
            "--include_imports",
            f"--descriptor_set_out={out}",
            *(str(PROTO_DIR / name) for name in PROTO_FILES),
        ]
    )
    assert status == 0, "protoc rejected the .proto files"
    pool = descriptor_pool.DescriptorPool()
    files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    for file in files.file:
        pool.Add(file)
    return pool


def _ours(pool: descriptor_pool.DescriptorPool, name: str) -> Facts:
    return flatten(_as_proto(pool.FindFileByName(name)))


@pytest.mark.parametrize(
    ("name", "oracle_module", "min_fields"),
    [("model_config.proto", oracle_config, 170), ("grpc_service.proto", oracle_service, 160)],
)
def test_matches_tritonclient_descriptors(
    fresh_pool: descriptor_pool.DescriptorPool,
    name: str,
    oracle_module: ModuleType,
    min_fields: int,
) -> None:
    oracle = flatten(_as_proto(oracle_module.DESCRIPTOR))
    compared_fields = sum(1 for kind, _ in oracle if kind == "field")
    assert compared_fields >= min_fields, "the oracle looks truncated"
    assert violations(oracle, _ours(fresh_pool, name), NEWER_THAN_ORACLE) == []


def test_every_newer_fact_is_defined(fresh_pool: descriptor_pool.DescriptorPool) -> None:
    ours = _ours(fresh_pool, "model_config.proto") | _ours(fresh_pool, "grpc_service.proto")
    assert {key: ours.get(key) for key in NEWER_THAN_ORACLE} == NEWER_THAN_ORACLE


def test_service_has_every_triton_rpc(fresh_pool: descriptor_pool.DescriptorPool) -> None:
    rpcs = {
        name: facts
        for (kind, name), facts in _ours(fresh_pool, "grpc_service.proto").items()
        if kind == "rpc"
    }
    assert len(rpcs) == 20
    stream = rpcs["inference.GRPCInferenceService.ModelStreamInfer"]
    assert stream == (
        ".inference.ModelInferRequest",
        ".inference.ModelStreamInferResponse",
        True,
        True,
    )
    assert sum(1 for facts in rpcs.values() if facts[2] or facts[3]) == 1


def test_health_is_the_standard_service(fresh_pool: descriptor_pool.DescriptorPool) -> None:
    assert _ours(fresh_pool, "health.proto") == HEALTH_FACTS


def test_a_changed_number_is_caught(fresh_pool: descriptor_pool.DescriptorPool) -> None:
    oracle = flatten(_as_proto(oracle_config.DESCRIPTOR))
    mutated = _as_proto(fresh_pool.FindFileByName("model_config.proto"))
    config = next(m for m in mutated.message_type if m.name == "ModelConfig")
    next(f for f in config.field if f.name == "max_batch_size").number = 40
    config.field.add(name="surprise", number=99, type=F.TYPE_BOOL, label=OPTIONAL)
    found = violations(oracle, flatten(mutated), NEWER_THAN_ORACLE)
    assert any("ModelConfig.max_batch_size" in line for line in found)
    assert any("ModelConfig.surprise: not defined by Triton" in line for line in found)


@pytest.mark.parametrize("module", [model_config_pb2, grpc_service_pb2, health_pb2])
def test_generated_modules_match_sources(
    fresh_pool: descriptor_pool.DescriptorPool, module: ModuleType
) -> None:
    generated = module.DESCRIPTOR
    assert generated.pool is _pool.POOL
    assert flatten(_as_proto(generated)) == _ours(fresh_pool, generated.name)


def test_private_pool_coexists_with_tritonclient() -> None:
    default = descriptor_pool.Default().FindMessageTypeByName("inference.ModelConfig")
    assert default is oracle_config.ModelConfig.DESCRIPTOR
    assert model_config_pb2.ModelConfig.DESCRIPTOR is not default
    assert _pool.POOL.FindMessageTypeByName("inference.ModelConfig") is (
        model_config_pb2.ModelConfig.DESCRIPTOR
    )


CONFIG_PBTXT = """
name: "resnet"
platform: "onnxruntime_onnx"
runtime: "libtriton_onnxruntime.so"
max_batch_size: 16
input [
  { name: "INPUT0" data_type: TYPE_FP32 format: FORMAT_NCHW dims: [ 3, -1, -1 ]
    is_non_linear_format_io: false }
]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 1000 ] label_filename: "labels.txt" } ]
version_policy { specific { versions: [ 1, 3 ] } }
dynamic_batching {
  preferred_batch_size: [ 4, 8 ]
  max_queue_delay_microseconds: 100
  priority_levels: 2
  default_priority_level: 1
  priority_queue_policy { key: 2 value { timeout_action: DELAY max_queue_size: 8 } }
}
instance_group [ { kind: KIND_CPU count: 2 } ]
parameters { key: "intra_op_thread_count" value { string_value: "1" } }
model_warmup [ { name: "w" batch_size: 1 inputs { key: "INPUT0" value {
  data_type: TYPE_FP32 dims: [ 3, 4, 4 ] zero_data: true } } } ]
model_metrics { metric_control [ { metric_identifier { family: "nv_inference_first_response_histogram_ms" }
  histogram_options { buckets: [ 1, 10, 100 ] } } ] }
"""


def test_config_pbtxt_parses_and_renders_as_json() -> None:
    config = text_format.Parse(CONFIG_PBTXT, model_config_pb2.ModelConfig())
    as_dict = json_format.MessageToDict(config, preserving_proto_field_name=True)
    assert as_dict["input"][0]["dims"] == ["3", "-1", "-1"]
    assert as_dict["dynamic_batching"]["priority_queue_policy"]["2"] == {
        "timeout_action": "DELAY",
        "max_queue_size": 8,
    }
    assert as_dict["model_metrics"]["metric_control"][0]["histogram_options"] == {
        "buckets": [1.0, 10.0, 100.0]
    }
    assert config.WhichOneof("scheduling_choice") == "dynamic_batching"
    parsed_back = json_format.ParseDict(as_dict, model_config_pb2.ModelConfig())
    assert parsed_back == config
    with pytest.raises(text_format.ParseError):
        text_format.Parse('name: "x" not_a_field: 1', model_config_pb2.ModelConfig())


def test_config_bytes_cross_between_implementations() -> None:
    config = text_format.Parse(CONFIG_PBTXT, model_config_pb2.ModelConfig())
    theirs = oracle_config.ModelConfig.FromString(config.SerializeToString())
    assert theirs.name == "resnet"
    assert list(theirs.dynamic_batching.preferred_batch_size) == [4, 8]
    assert theirs.dynamic_batching.priority_queue_policy[2].max_queue_size == 8
    assert model_config_pb2.ModelConfig.FromString(theirs.SerializeToString()) == config


class _Inference(grpc_service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self) -> None:
        self.seen: list[grpc_service_pb2.ModelInferRequest] = []

    def ModelInfer(self, request: grpc_service_pb2.ModelInferRequest, context: object) -> object:
        self.seen.append(request)
        doubled = np.frombuffer(request.raw_input_contents[0], dtype="<f4") * 2
        output = grpc_service_pb2.ModelInferResponse.InferOutputTensor(
            name="OUTPUT0", datatype="FP32", shape=request.inputs[0].shape
        )
        return grpc_service_pb2.ModelInferResponse(
            model_name=request.model_name,
            id=request.id,
            outputs=[output],
            raw_output_contents=[doubled.astype("<f4").tobytes()],
        )

    def ServerLive(self, request: object, context: object) -> object:
        return grpc_service_pb2.ServerLiveResponse(live=True)

    def ModelConfig(self, request: object, context: object) -> object:
        config = text_format.Parse(CONFIG_PBTXT, model_config_pb2.ModelConfig())
        return grpc_service_pb2.ModelConfigResponse(config=config)


class _Health(health_pb2_grpc.HealthServicer):
    def Check(self, request: object, context: object) -> object:
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


def _infer(client: triton_grpc.InferenceServerClient, data: np.ndarray) -> np.ndarray:
    tensor = triton_grpc.InferInput("INPUT0", list(data.shape), "FP32")
    tensor.set_data_from_numpy(data)
    result = client.infer(
        "resnet",
        [tensor],
        model_version="1",
        request_id="req-7",
        outputs=[triton_grpc.InferRequestedOutput("OUTPUT0")],
        sequence_id=5,
        sequence_start=True,
        priority=2,
        parameters={"tag": "a"},
    )
    return result.as_numpy("OUTPUT0")


def _check_request(request: grpc_service_pb2.ModelInferRequest, data: np.ndarray) -> None:
    assert (request.model_name, request.model_version, request.id) == ("resnet", "1", "req-7")
    assert list(request.inputs[0].shape) == list(data.shape)
    assert request.inputs[0].datatype == "FP32"
    assert [o.name for o in request.outputs] == ["OUTPUT0"]
    assert request.parameters["sequence_id"].int64_param == 5
    assert request.parameters["sequence_start"].bool_param is True
    assert request.parameters["priority"].uint64_param == 2
    assert request.parameters["tag"].string_param == "a"
    sent = np.frombuffer(request.raw_input_contents[0], dtype="<f4").reshape(data.shape)
    np.testing.assert_array_equal(sent, data)


def test_generated_servicer_answers_tritonclient() -> None:
    inference = _Inference()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(inference, server)
    health_pb2_grpc.add_HealthServicer_to_server(_Health(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        client = triton_grpc.InferenceServerClient(f"127.0.0.1:{port}")
        assert client.is_server_live()
        config = client.get_model_config("resnet").config
        assert (config.name, config.max_batch_size) == ("resnet", 16)
        data = np.arange(6, dtype=np.float32).reshape(2, 3)
        np.testing.assert_array_equal(_infer(client, data), data * 2)
        _check_request(inference.seen[0], data)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        client.close()
    finally:
        server.stop(None)


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_protos", REPO / "scripts" / "gen_protos.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_code_is_current() -> None:
    report: list[str] = []
    assert _load_generator().check(report.append), "\n".join(report)


def test_drift_check_notices_an_edit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    generator = _load_generator()
    copy = tmp_path / "generated"
    shutil.copytree(generator.OUT_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    edited = copy / "health_pb2.py"
    edited.write_text(edited.read_text() + "# hand edit\n")
    monkeypatch.setattr(generator, "OUT_DIR", copy)
    report: list[str] = []
    assert not generator.check(report.append)
    assert any("health_pb2.py" in line for line in report)
