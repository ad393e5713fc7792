"""The HTTP codec without sockets: JSON and binary requests, raw requests, responses, and the
RapidJSON-worded syntax errors.

Every test runs twice: with every request document parsed by orjson into Python lists, and
with every one parsed by simdjson, whose ``data`` arrays are read into numbers directly (what
large documents get). Both must give the same arrays and the same errors."""

from __future__ import annotations

import json
import math
import struct

import numpy as np
import pytest
import simdjson

from server.errors import Code, ServerError
from server.protocol import json_errors
from server.protocol.http_codec import (
    decode_infer_request,
    decode_raw_request,
    encode_infer_response,
    header_length,
    parse_json,
)
from server.repository.view import ModelView, TensorSpec
from server.types import InferRequest, InferResponse, OutputTensor


@pytest.fixture(autouse=True, params=["orjson", "simdjson"])
def parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(
        json_errors, "LAZY_MIN_BYTES", 0 if request.param == "simdjson" else 1 << 62
    )
    return str(request.param)


def view(
    datatype: str = "FP32", dims: tuple[int, ...] = (-1,), max_batch: int = 8, inputs: int = 1
) -> ModelView:
    specs = {f"IN{i}": TensorSpec(f"IN{i}", datatype, dims) for i in range(inputs)}
    return ModelView(
        "m", "1", "", "onnxruntime", max_batch, specs, {"OUT": TensorSpec("OUT", datatype, dims)}
    )


def decode(document: object, binary: bytes = b"") -> InferRequest:
    head = json.dumps(document).encode()
    return decode_infer_request(head + binary, len(head) if binary else None, "m", "")


def error_of(call: object) -> ServerError:
    with pytest.raises(ServerError) as info:
        call()  # type: ignore[operator]
    return info.value


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"", "The document is empty. at 0"),
        (b"   ", "The document is empty. at 3"),
        (b"{not", "Missing a name for object member. at 1"),
        (b'{"a" 1}', "Missing a colon after a name of object member. at 5"),
        (b'{"a":1 "b":2}', "Missing a comma or '}' after an object member. at 7"),
        (b"[1 2]", "Missing a comma or ']' after an array element. at 3"),
        (b'{"a":tru}', "Invalid value. at 8"),
        (b'"abc', "Missing a closing quotation mark in string. at 4"),
        (b'"a\\q"', "Invalid escape character in string. at 2"),
        (b'"\\u12G4"', "Incorrect hex digit after \\u escape in string. at 1"),
        (b"1.", "Miss fraction part in number. at 2"),
        (b"1e", "Miss exponent in number. at 2"),
        (b"{} {}", "The document root must not be followed by other values. at 3"),
        # RapidJSON reports where it stopped, after what it could consume.
        (b"-", "Invalid value. at 1"),
        (b"[-]", "Invalid value. at 2"),
        (b"N", "Invalid value. at 1"),
        (b'{"inputs": Nax}', "Invalid value. at 13"),
        (b'{"inputs": -Nab}', "Invalid value. at 14"),
        (b'{"inputs": Iny}', "Invalid value. at 13"),
        (b"Infinit", "Invalid value. at 7"),
        (b'["\\ud800"]', "The surrogate pair in string is invalid. at 2"),
        (b'["\\ud800\\u0041"]', "The surrogate pair in string is invalid. at 2"),
        (b'["\\ud800\\u00G1"]', "Incorrect hex digit after \\u escape in string. at 2"),
        # RapidJSON's two overflow checks, placed at the number's first byte.
        (b"[1e400]", "Number too big to be stored in double. at 1"),
        (b'{"a": [1, -1e309]}', "Number too big to be stored in double. at 10"),
        (b"[0.1e310]", "Number too big to be stored in double. at 1"),
        (b"[1e" + b"9" * 5000 + b"]", "Number too big to be stored in double. at 1"),
        (b"[1" + b"0" * 400 + b"]", "Number too big to be stored in double. at 1"),
    ],
)
def test_syntax_errors_are_worded_like_rapidjson(text: bytes, message: str) -> None:
    for infer in (False, True):
        error = error_of(lambda: parse_json(text, infer=infer))  # noqa: B023
        assert error.code == Code.INTERNAL
        assert error.message == f"failed to parse the request JSON buffer: {message}"


def test_numbers_past_the_largest_double_that_rapidjson_takes_are_infinity() -> None:
    # The exponent is within 308 plus the fraction's digits: no check of RapidJSON's fires.
    values = json_errors.loads(b"[1.5e309, 0.5e309, -1.7976931348623159e308, 0.1e309, 1e308]")
    assert values == [math.inf, math.inf, -math.inf, 1e308, 1e308]


@pytest.mark.filterwarnings("error")  # numpy's overflow warning must not escape either
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[1.0, 1e39]", [1.0, math.inf]),
        ("[1e39, 1.0]", [math.inf, 1.0]),
        ("[-1e39, 2]", [-math.inf, 2.0]),
        ("[NaN, 1e39]", [math.nan, math.inf]),
        ("[1e39, NaN]", [math.inf, math.nan]),
        ("[3.4028235e38, -3.4028235e38]", [3.4028235e38, -3.4028235e38]),
        ("[Infinity, 5]", [math.inf, 5.0]),
    ],
)
def test_fp32_data_past_float32_range_is_infinity(text: str, expected: list[float]) -> None:
    # Triton reads each number as a double and casts it to float.
    body = b'{"inputs":[{"name":"IN0","shape":[1,2],"datatype":"FP32","data":' + text.encode()
    request = decode_infer_request(body + b"}]}", None, "m", "")
    array = request.inputs[0].data
    assert array.dtype == np.float32
    np.testing.assert_array_equal(array, np.array([expected], dtype=np.float32))


def test_fp32_data_is_each_number_as_a_double_cast_to_float() -> None:
    # Integers past 2**53 round to a double first, then to a float, as Triton reads them.
    values = [0.1, 1 / 3, 2**54 + 2**30 + 1, 16777217, -(2**63), 3.4028235e38, 1e-46, -0.0]
    request = decode(
        {"inputs": [{"name": "IN0", "shape": [8], "datatype": "FP32", "data": values}]}
    )
    array = request.inputs[0].data
    expected = np.array([np.float32(np.float64(v)) for v in values], dtype=np.float32)
    assert array.tobytes() == expected.tobytes()
    assert array.flags.writeable  # a model may change its inputs in place


def test_nan_and_infinities_are_accepted() -> None:
    values = json_errors.loads(b"[NaN, Infinity, -Infinity, -Inf]")
    assert math.isnan(values[0]) and values[1:] == [math.inf, -math.inf, -math.inf]
    document = json_errors.loads(b'{"Inf": "Info \\" Inf", "v": [Inf, 1]}')
    assert document == {"Inf": 'Info " Inf', "v": [math.inf, 1]}, "strings keep their text"


def test_a_lone_low_surrogate_is_taken_and_written_back_as_triton_writes_it() -> None:
    document = json_errors.loads(b'{"id": "a\\udc00b"}')
    assert document == {"id": "a\udc00b"}
    assert json_errors.dumps(document) == b'{"id":"a\xed\xb0\x80b"}'
    assert json.loads(json_errors.dumps({"error": [document["id"], 1.5]})) == {
        "error": ["a\udc00b", 1.5]
    }


def test_bytes_that_are_not_utf8_pass_through_as_replacement_characters() -> None:
    # RapidJSON, as Triton runs it, does not validate encoding; such a name reaches the
    # model lookup (and its error message) instead of failing the parse.
    text = b'{"inputs":[{"name":"IN\xff","datatype":"FP32","shape":[1],"data":[NaN]}]}'
    request = decode_infer_request(text, None, "m", "")
    assert request.inputs[0].name == "IN\ufffd"
    assert math.isnan(request.inputs[0].data[0])
    assert json_errors.loads(b'["caf\xc3\xa9", "\xc3", NaN]')[:2] == ["caf\u00e9", "\ufffd"]
    # An encoded surrogate is kept and written back byte for byte, as Triton echoes it.
    document = json_errors.loads(b'{"id": "a\xed\xb0\x80", "v": NaN}')
    assert document["id"] == "a\udc00"
    assert json_errors.dumps({"id": document["id"]}) == b'{"id":"a\xed\xb0\x80"}'


@pytest.mark.parametrize(
    ("value", "body", "expected"),
    [
        (None, 10, None),
        ("4", 10, 4),
        ("+0", 10, 0),
        ("abc", 10, 0),
        ("5x", 10, 5),
        (" 7", 10, 7),
        ("10", 10, 10),
        ("\u0663", 10, 0),  # a digit to Python, not to strtol
    ],
)
def test_header_length_reads_like_strtol(
    value: str | None, body: int, expected: int | None
) -> None:
    assert header_length(value, body) == expected


@pytest.mark.parametrize("value", ["-1", "11", "99999999999"])
def test_header_length_out_of_range(value: str) -> None:
    error = error_of(lambda: header_length(value, 10))
    assert error.message == f"inference header size should be in range (0, 10), got: {int(value)}"


def test_json_and_binary_inputs_decode_to_arrays() -> None:
    raw = np.arange(4, dtype="<f4").tobytes()
    strings = struct.pack("<I", 2) + b"hi" + struct.pack("<I", 0)
    request = decode(
        {
            "id": "7",
            "parameters": {"priority": 2, "timeout": 5, "custom": "x"},
            "inputs": [
                {"name": "A", "datatype": "INT64", "shape": [2, 2], "data": [[1, 2], [3, 4]]},
                {
                    "name": "B",
                    "datatype": "FP32",
                    "shape": [1, 4],
                    "parameters": {"binary_data_size": 16},
                },
                {
                    "name": "C",
                    "datatype": "BYTES",
                    "shape": [2],
                    "parameters": {"binary_data_size": len(strings)},
                },
                {"name": "D", "datatype": "BYTES", "shape": [1], "data": ["\u00e9"]},
            ],
            "outputs": [
                {"name": "X"},
                {"name": "X", "parameters": {"binary_data": True}},
                {"name": "Y"},
            ],
        },
        raw + strings,
    )
    assert (request.id, request.priority, request.timeout_us) == ("7", 2, 5)
    a, b, c, d = request.inputs
    np.testing.assert_array_equal(a.data, [[1, 2], [3, 4]])
    assert a.data.dtype == np.int64
    np.testing.assert_array_equal(b.data, [[0, 1, 2, 3]])
    assert list(c.data) == [b"hi", b""]
    assert list(d.data) == ["\u00e9".encode()]
    assert [o.name for o in request.outputs or []] == ["X", "Y"], (
        "a repeated output is answered once"
    )


@pytest.mark.parametrize(
    ("datatype", "data", "expected"),
    [
        ("INT8", [300, -129], [44, 127]),
        ("UINT8", [2**64 - 1, 256], [255, 0]),
        ("FP32", [1, 2.5], [1.0, 2.5]),
        ("BOOL", [True, False], [True, False]),
    ],
)
def test_json_numbers_convert_as_triton_does(
    datatype: str, data: list[object], expected: list[object]
) -> None:
    request = decode({"inputs": [{"name": "A", "datatype": datatype, "shape": [2], "data": data}]})
    assert request.inputs[0].data.tolist() == expected


@pytest.mark.parametrize(
    ("datatype", "data", "words"),
    [
        ("BOOL", [1, 0], "Unable to parse 'data': attempt to access JSON non-boolean as boolean"),
        (
            "INT32",
            [1.5, 2],
            "Unable to parse 'data': attempt to access JSON non-signed-integer as signed-integer",
        ),
        (
            "INT64",
            [2**63, 1],
            "Unable to parse 'data': attempt to access JSON non-signed-integer as signed-integer",
        ),
        (
            "UINT32",
            [-1, 1],
            "Unable to parse 'data': attempt to access JSON non-unsigned-integer as unsigned-integer",
        ),
        ("FP64", [True, 1], "Unable to parse 'data': attempt to access JSON non-number as double"),
        (
            "BYTES",
            [1, "a"],
            "Unable to parse JSON bytes array: attempt to access JSON non-string as string",
        ),
        ("FP32", [1.0], "Unable to parse 'data': Shape does not match true shape of 'data' field"),
    ],
)
def test_wrong_json_elements_are_internal_errors(
    datatype: str, data: list[object], words: str
) -> None:
    error = error_of(
        lambda: decode(
            {"inputs": [{"name": "A", "datatype": datatype, "shape": [2], "data": data}]}
        )
    )
    assert (error.code, error.message) == (Code.INTERNAL, words)


def decode_text(text: bytes) -> InferRequest:
    return decode_infer_request(text, None, "m", "")


@pytest.mark.parametrize(
    ("text", "expected", "dtype"),
    [
        # Ragged nesting is flattened before the count is checked, as Triton walks it.
        (
            b'{"inputs":[{"name":"A","datatype":"FP32","shape":[3],"data":[[1],[2,3]]}]}',
            [1.0, 2.0, 3.0],
            np.float32,
        ),
        (
            b'{"inputs":[{"name":"A","datatype":"INT16","shape":[3],"data":[[1,[-2]],3]}]}',
            [1, -2, 3],
            np.int16,
        ),
        # NaN and integers beyond 64 bits are refused by simdjson and decided by loads.
        (
            b'{"inputs":[{"name":"A","datatype":"FP64","shape":[2],"data":[NaN,1]}]}',
            [math.nan, 1.0],
            np.float64,
        ),
        (
            b'{"inputs":[{"name":"A","datatype":"FP32","shape":[2],'
            b'"data":[123456789012345678901234567890,1]}]}',
            [np.float32(1.2345679e29), 1.0],
            np.float32,
        ),
        # A repeated key keeps its last value.
        (
            b'{"inputs":[{"name":"A","datatype":"FP32","shape":[2],"data":[1,2],"data":[3,4]}]}',
            [3.0, 4.0],
            np.float32,
        ),
        (
            b'{"inputs":[{"name":"A","datatype":"FP32","shape":[1],"data":[1]}],'
            b'"inputs":[{"name":"A","datatype":"FP32","shape":[1],"data":[9]}]}',
            [9.0],
            np.float32,
        ),
        (
            b'{"inputs":[{"name":"A","datatype":"UINT64","shape":[2],'
            b'"data":[18446744073709551615,0]}]}',
            [2**64 - 1, 0],
            np.uint64,
        ),
        (
            b'{"inputs":[{"name":"A","datatype":"INT64","shape":[1],"data":[-9223372036854775808]}]}',
            [-(2**63)],
            np.int64,
        ),
        (b'{"inputs":[{"name":"A","datatype":"FP32","shape":[0],"data":[]}]}', [], np.float32),
    ],
)
def test_json_data_reads_the_same_through_either_parser(
    text: bytes, expected: list[object], dtype: type
) -> None:
    data = decode_text(text).inputs[0].data
    assert data.dtype == dtype
    assert data.flags.writeable, "a model may write to its inputs"
    np.testing.assert_array_equal(data, np.array(expected, dtype=dtype))


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (
            b'{"inputs":[{"name":"A","datatype":"FP32","shape":[1],"data":5}]}',
            "Unable to parse 'data': attempt to access JSON non-array as array",
        ),
        (
            b'{"inputs":[{"name":"A","datatype":"FP32","shape":[1],"data":{"x":[1]}}]}',
            "Unable to parse 'data': attempt to access JSON non-array as array",
        ),
        (
            b'{"inputs":[{"name":"A","datatype":"FP32","shape":[2],"data":[1.5,"2"]}]}',
            "Unable to parse 'data': attempt to access JSON non-number as double",
        ),
        (
            b'{"inputs":[{"name":"A","datatype":"FP32","shape":[2],"data":[1.5,null]}]}',
            "Unable to parse 'data': attempt to access JSON non-number as double",
        ),
        (
            b'{"inputs":[{"name":"A","datatype":"INT8","shape":[2],"data":[1,true]}]}',
            "Unable to parse 'data': attempt to access JSON non-signed-integer as signed-integer",
        ),
        (
            b'{"inputs":[{"name":"A","datatype":"UINT8","shape":[2],"data":[1,[-1]]}]}',
            "Unable to parse 'data': attempt to access JSON non-unsigned-integer as unsigned-integer",
        ),
        (
            b'{"inputs":[{"name":"A","datatype":"INT32","shape":[3],"data":[[1,2],[3,4]]}]}',
            "Unable to parse 'data': Shape does not match true shape of 'data' field",
        ),
    ],
)
def test_json_data_errors_are_the_same_through_either_parser(text: bytes, words: str) -> None:
    error = error_of(lambda: decode_text(text))
    assert (error.code, error.message) == (Code.INTERNAL, words)


def test_large_documents_read_data_without_python_numbers(parser: str) -> None:
    values = np.linspace(-1, 1, 600, dtype=np.float32)
    text = json.dumps(
        {"inputs": [{"name": "A", "datatype": "FP32", "shape": [600], "data": values.tolist()}]}
    ).encode()
    document = json_errors.loads_infer(text)
    data = document["inputs"][0]["data"]
    assert isinstance(data, simdjson.Array if parser == "simdjson" else list)
    np.testing.assert_array_equal(decode_text(text).inputs[0].data, values)


def test_large_documents_take_the_fast_parser_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.undo()
    small = b'{"inputs":[{"name":"A","datatype":"FP32","shape":[1],"data":[1]}]}'
    large = small.replace(b"[1]}", b"[1]" + b" " * json_errors.LAZY_MIN_BYTES + b"}")
    assert isinstance(json_errors.loads_infer(small)["inputs"][0]["data"], list)
    assert isinstance(json_errors.loads_infer(large)["inputs"][0]["data"], simdjson.Array)


def test_one_parser_per_thread_reads_documents_in_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(json_errors, "LAZY_MIN_BYTES", 0)
    monkeypatch.setattr(json_errors, "KEPT_PARSER_MAX_BYTES", 200)
    made: list[object] = []
    real = simdjson.Parser

    def counted() -> object:
        made.append(real())
        return made[-1]

    monkeypatch.setattr(json_errors.simdjson, "Parser", counted)

    def data(values: list[int], pad: int = 0) -> object:
        text = json.dumps(_one("INT32", [len(values)], values)).encode() + b" " * pad
        return json_errors.loads_infer(text)["inputs"][0]["data"]

    assert list(data([0])) == [0]  # the thread's parser, made now if it had none or it is busy
    made.clear()
    assert [list(data([i, i + 1])) for i in range(5)] == [[i, i + 1] for i in range(5)]
    assert made == []
    # While an array of the kept parser's document is held, a new parser reads the next
    # and is kept from then on.
    held = data([7, 8])
    assert list(data([9])) == [9] and list(held) == [7, 8]
    assert len(made) == 1
    assert list(data([10])) == [10] and list(held) == [7, 8]
    assert len(made) == 1
    del held
    # A document past the size a kept parser reads gets a parser of its own.
    assert list(data([1, 2, 3], pad=300)) == [1, 2, 3]
    assert len(made) == 2
    assert list(data([4])) == [4]
    assert len(made) == 2


def test_bytes_count_is_checked_with_the_model_name() -> None:
    # Kept on the input: validation reports it after every input's datatype and shape.
    (tensor,) = decode(
        {"inputs": [{"name": "A", "datatype": "BYTES", "shape": [3], "data": ["a"]}]}
    ).inputs
    error = tensor.content_error
    assert error is not None and error.code == Code.INVALID_ARG
    assert (
        error.message
        == "[request id: <id_unknown>] expected 3 string elements for inference input 'A' for model 'm', got 1"
    )


def _one(datatype: str, shape: list[int], data: object) -> dict[str, object]:
    return {"inputs": [{"name": "A", "datatype": datatype, "shape": shape, "data": data}]}


@pytest.mark.parametrize(
    ("datatype", "shape", "data"),
    [
        ("INT32", [0], [1, 2, 3]),
        ("INT32", [2, 0], "not an array"),
        ("FP32", [], [1.5]),
        ("FP16", [0], [1]),  # JSON cannot carry FP16, but there is nothing to carry
        ("BYTES", [0], [5]),
    ],
)
def test_no_data_is_read_for_a_tensor_of_no_elements(
    datatype: str, shape: list[int], data: object
) -> None:
    (tensor,) = decode(_one(datatype, shape, data)).inputs
    assert tensor.data.size == 0 and tensor.content_error is None
    assert tensor.shape == tuple(shape)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ([1, 2, 3, "x"], "Shape does not match true shape of 'data' field"),
        ([[1, 2], [3, True]], "Shape does not match true shape of 'data' field"),
        ([1, "y", 3, "x"], "attempt to access JSON non-signed-integer as signed-integer"),
        ([1, 2.5], "attempt to access JSON non-signed-integer as signed-integer"),
        ([1, 2], "Shape does not match true shape of 'data' field"),
    ],
)
def test_the_first_element_past_the_shape_or_of_a_wrong_kind_decides(
    data: list[object], words: str
) -> None:
    error = error_of(lambda: decode(_one("INT32", [3], data)))
    assert (error.code, error.message) == (Code.INTERNAL, f"Unable to parse 'data': {words}")


def test_output_parameters_that_are_not_an_object_are_ignored() -> None:
    document = _one("INT32", [1], [1])
    document["outputs"] = [
        {"name": "O", "parameters": 1.5},
        {"name": "P", "parameters": [{"binary_data": 5}]},
        {"name": "Q", "parameters": None},
    ]
    outputs = decode(document).outputs or []
    assert [(o.name, o.parameters) for o in outputs] == [("O", {}), ("P", {}), ("Q", {})]


@pytest.mark.parametrize("where", ["input", "output"])
@pytest.mark.parametrize(
    ("params", "words"),
    [
        (
            {"shared_memory_region": 5},
            "'shared_memory_region': attempt to access JSON non-string as string",
        ),
        (
            {"shared_memory_region": "r", "shared_memory_byte_size": True},
            "'shared_memory_byte_size': attempt to access JSON non-unsigned-integer as unsigned-integer",
        ),
        (
            {"shared_memory_region": "r", "shared_memory_byte_size": 2**64},
            "'shared_memory_byte_size': attempt to access JSON non-unsigned-integer as unsigned-integer",
        ),
        (
            {
                "shared_memory_region": "r",
                "shared_memory_byte_size": "x",
                "shared_memory_offset": -1,
            },
            "'shared_memory_offset': attempt to access JSON non-unsigned-integer as unsigned-integer",
        ),
    ],
)
def test_shared_memory_parameters_are_read_as_triton_reads_json(
    where: str, params: dict[str, object], words: str
) -> None:
    document = (
        {"inputs": [{"name": "A", "datatype": "INT32", "shape": [1], "parameters": params}]}
        if where == "input"
        else {**_one("INT32", [1], [1]), "outputs": [{"name": "O", "parameters": params}]}
    )
    error = error_of(lambda: decode(document))
    assert (error.code, error.message) == (Code.INTERNAL, f"Unable to parse {words}")


def test_a_shared_memory_byte_size_left_out_is_zero() -> None:
    params = {"shared_memory_region": "r", "shared_memory_offset": 4}
    document = {"inputs": [{"name": "A", "datatype": "INT32", "shape": [1], "parameters": params}]}
    document["outputs"] = [{"name": "O", "parameters": {"shared_memory_region": "r"}}]
    request = decode(document)
    assert request.inputs[0].parameters["shared_memory_byte_size"] == 0
    assert (request.outputs or [])[0].parameters["shared_memory_byte_size"] == 0


def test_raw_request_deduces_the_variable_dimension() -> None:
    body = np.arange(6, dtype="<f4").tobytes()
    request = decode_raw_request(body, view("FP32", (2, -1), max_batch=4), "")
    (tensor,) = request.inputs
    assert (tensor.name, tensor.shape) == ("IN0", (1, 2, 3))
    assert request.parameters == {"binary_data_output": True}
    assert decode_raw_request(body, view("FP32", (-1,), max_batch=0), "").inputs[0].shape == (6,)
    strings = decode_raw_request(b"text", view("BYTES", (1,)), "").inputs[0]
    assert strings.shape == (1, 1) and strings.data[0, 0] == b"text"


@pytest.mark.parametrize(
    ("model", "body", "message"),
    [
        (
            view(inputs=2),
            b"",
            "Raw request must only have 1 input (found 1) to be deduced but got 2 inputs in 'm' model configuration",
        ),
        (
            view("BYTES", (-1,)),
            b"x",
            "For BYTE datatype raw input 'IN0', the model must have input shape [1]",
        ),
        (
            view("FP32", (-1, -1)),
            b"",
            "The shape of the raw input 'IN0' can not be deduced because there are more than one variable-sized dimension",
        ),
        (
            view("FP32", (2, -1)),
            b"\x00" * 12,
            "input byte size mismatch for input 'raw_input' for model 'm'. Expected 8, got 12",
        ),
    ],
)
def test_raw_request_errors(model: ModelView, body: bytes, message: str) -> None:
    error = error_of(lambda: decode_raw_request(body, model, ""))
    assert error.message == "[request id: <id_unknown>] " + message


def test_response_mixes_json_and_binary_outputs() -> None:
    request = decode(
        {
            "parameters": {"binary_data_output": True},
            "inputs": [],
            "outputs": [
                {"name": "A", "parameters": {"binary_data": False}},
                {"name": "B"},
                {"name": "E"},
            ],
        }
    )
    a = np.array([0.1, math.nan], dtype=np.float32)
    b = np.array([1, 2], dtype=np.int16)
    empty = np.zeros((0,), dtype=np.float32)
    response = InferResponse(
        "m",
        "1",
        [
            OutputTensor("A", "FP32", (2,), a, {"binary_data": False}),
            OutputTensor("B", "INT16", (2,), b, {}),
            OutputTensor("E", "FP32", (0,), empty, {}),
        ],
        id="r",
    )
    body, length = encode_infer_response(response, request)
    assert length is not None
    head = json.loads(body[:length])
    assert head["id"] == "r" and head["model_version"] == "1"
    first, second, third = head["outputs"]
    assert first["data"][0] == float(np.float32(0.1)) and math.isnan(first["data"][1])
    assert b"NaN" in body[:length], "non-finite values are written as RapidJSON writes them"
    assert second["parameters"] == {"binary_data_size": 4} and "data" not in second
    assert third["parameters"] == {"binary_data_size": 0}
    assert body[length:] == b.tobytes()


def test_response_without_binary_bytes_is_plain_json() -> None:
    request = decode({"parameters": {"binary_data_output": True}, "inputs": []})
    response = InferResponse(
        "m", "1", [OutputTensor("E", "FP32", (0,), np.zeros(0, np.float32), {})]
    )
    body, length = encode_infer_response(response, request)
    assert length is None
    assert json.loads(body)["outputs"][0]["parameters"] == {"binary_data_size": 0}


@pytest.mark.parametrize("count", [3, 64, 65, 300])  # both sides of the list/numpy switch
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float_outputs_are_written_through_double_precision(count: int, dtype: type) -> None:
    request = decode({"inputs": []})
    values = np.full(count, 0.1, dtype=dtype)
    values[1] = -2.5
    response = InferResponse("m", "1", [OutputTensor("F", "FP32", (count,), values, {})])
    body, _ = encode_infer_response(response, request)
    written = body.split(b'"data":[', 1)[1].split(b"]", 1)[0].split(b",")
    assert len(written) == count
    assert written[0] == (b"0.10000000149011612" if dtype == np.float32 else b"0.1")
    assert written[1] == b"-2.5"


@pytest.mark.parametrize("count", [4, 65])
def test_non_finite_outputs_are_written_as_rapidjson_writes_them(count: int) -> None:
    request = decode({"inputs": []})
    values = np.ones(count, dtype=np.float32)
    values[:3] = [np.nan, np.inf, -np.inf]
    response = InferResponse("m", "1", [OutputTensor("F", "FP32", (count,), values, {})])
    body, _ = encode_infer_response(response, request)
    assert b'"data":[NaN,Infinity,-Infinity,' + b"1.0," * (count - 4) + b"1.0]" in body
    # Finite values whose sum overflows take the same careful path, and stay exact.
    big = np.full(count, 3e38, dtype=np.float32)
    response = InferResponse("m", "1", [OutputTensor("F", "FP32", (count,), big, {})])
    body, _ = encode_infer_response(response, request)
    assert json.loads(body)["outputs"][0]["data"] == [float(np.float32(3e38))] * count


def test_fp16_output_cannot_be_json() -> None:
    request = decode({"inputs": []})
    response = InferResponse(
        "m", "1", [OutputTensor("H", "FP16", (1,), np.ones(1, np.float16), {})]
    )
    error = error_of(lambda: encode_infer_response(response, request))
    assert (
        error.message
        == "sending FP16 data via JSON is not supported. Please use the binary data format for output"
    )
