"""JSON documents as Triton reads them.

Triton parses with RapidJSON, which accepts ``NaN``/``Infinity`` and words its syntax errors
in its own way (``Missing a name for object member. at 1``). Clients and tests match on that
text, so when the fast parser rejects a document this module finds the first error the way
RapidJSON reports it: the same message and the same byte offset.
"""

from __future__ import annotations

import json
import re
import threading
from typing import Any

import orjson
import simdjson

_WS = b" \t\n\r"
_SHORT_INF = re.compile(r'"(?:[^"\\]|\\.)*"|Inf(?!inity)')
_ESCAPES = b'"\\/bfnrtu'
_DIGITS = b"0123456789"
_HEX = b"0123456789abcdefABCDEF"

EMPTY = "The document is empty."
ROOT_NOT_SINGULAR = "The document root must not be followed by other values."
INVALID_VALUE = "Invalid value."
MISS_NAME = "Missing a name for object member."
MISS_COLON = "Missing a colon after a name of object member."
MISS_COMMA_OBJECT = "Missing a comma or '}' after an object member."
MISS_COMMA_ARRAY = "Missing a comma or ']' after an array element."
BAD_UNICODE_HEX = "Incorrect hex digit after \\u escape in string."
BAD_ESCAPE = "Invalid escape character in string."
BAD_SURROGATE = "The surrogate pair in string is invalid."
MISS_QUOTE = "Missing a closing quotation mark in string."
BAD_ENCODING = "Invalid encoding in string."
MISS_FRACTION = "Miss fraction part in number."
MISS_EXPONENT = "Miss exponent in number."
NUMBER_TOO_BIG = "Number too big to be stored in double."
# Not one of RapidJSON's: its recursive parser has no such limit, Python's does.
TOO_DEEP = "The document nests deeper than 1000 levels."


class JsonSyntaxError(ValueError):
    def __init__(self, message: str, offset: int) -> None:
        super().__init__(f"{message} at {offset}")
        self.message = message
        self.offset = offset


def loads(buffer: bytes | memoryview) -> Any:
    """Parse a document; raise JsonSyntaxError with RapidJSON's wording when it is invalid."""
    try:
        return orjson.loads(buffer)
    except orjson.JSONDecodeError:
        pass
    data = bytes(buffer)
    try:
        _Scanner(data).document()
    except RecursionError:
        raise JsonSyntaxError(TOO_DEEP, 0) from None
    # Valid for RapidJSON but not for orjson: NaN and the infinities, and bytes that are not
    # UTF-8, which RapidJSON passes through as Triton runs it (without validating encoding).
    # Encoded surrogates are kept (and written back as they came, see dumps); other such
    # bytes become U+FFFD.
    try:
        text = data.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        text = data.decode("utf-8", "replace")
    try:
        return json.loads(text, parse_constant=_constant)
    except RecursionError:
        raise JsonSyntaxError(TOO_DEEP, 0) from None
    except ValueError:  # "Inf", which RapidJSON takes and the standard parser does not
        return json.loads(_SHORT_INF.sub(_long_inf, text), parse_constant=_constant)


def _long_inf(match: re.Match[str]) -> str:
    # Strings are matched whole so that an "Inf" inside one is left alone.
    return "Infinity" if match.group(0) == "Inf" else match.group(0)


def dumps(value: Any, option: int = 0) -> bytes:
    """orjson's encoding of ``value``. A string holding a lone surrogate (from a ``\\udc00``
    escape, which RapidJSON takes) is written as Triton writes it: the surrogate's three
    bytes, which Python's json module reads back."""
    try:
        return orjson.dumps(value, option=option)
    except orjson.JSONEncodeError:
        return orjson.dumps(_with_surrogates(value), option=option)


def _with_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            text = json.dumps(value, ensure_ascii=False)
            return orjson.Fragment(text.encode("utf-8", "surrogatepass"))
        return value
    if isinstance(value, dict):
        return {key: _with_surrogates(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_with_surrogates(item) for item in value]
    return value


# Below this size orjson builds the whole document faster than simdjson's proxies do.
LAZY_MIN_BYTES = 2048
# A parser keeps buffers sized for the largest document it has read; one kept for reuse
# reads documents up to this size, so that one huge body does not stay resident.
KEPT_PARSER_MAX_BYTES = 1 << 20

_kept = threading.local()


def _simdjson_parse(buffer: bytes | memoryview) -> Any:
    """simdjson's parse, on a parser kept per thread when the document is not too large: a
    fresh parser allocates its buffers anew for every document."""
    if len(buffer) > KEPT_PARSER_MAX_BYTES:
        return simdjson.Parser().parse(buffer)
    parser = getattr(_kept, "parser", None)
    if parser is None:
        parser = _kept.parser = simdjson.Parser()
    try:
        return parser.parse(buffer)
    except RuntimeError:
        # simdjson refuses to reuse a parser while an Object or Array of its last document
        # is still referenced; a new one is kept instead, and the old one goes with them.
        parser = _kept.parser = simdjson.Parser()
        return parser.parse(buffer)


def loads_infer(buffer: bytes | memoryview) -> Any:
    """``loads`` for an inference request. A large valid document is parsed by simdjson, and
    each input's ``data`` array is left a simdjson Array, which ``json_tensor`` reads into
    numbers without a Python object per element. Anything simdjson refuses (NaN, integers
    beyond 64 bits, a syntax error) goes through ``loads``, which decides and words it."""
    if len(buffer) >= LAZY_MIN_BYTES:
        try:
            document = _simdjson_parse(buffer)
            if isinstance(document, simdjson.Object):
                return _lazy_inputs(document)
        except Exception:  # noqa: BLE001 - every refusal is decided again below
            pass
    return loads(buffer)


class _RepeatedKey(Exception):
    pass


def _lazy_inputs(document: simdjson.Object) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key in document:
        if key in result:
            # simdjson finds a repeated key's first value, loads keeps its last.
            raise _RepeatedKey
        value = document[key]
        if key == "inputs" and isinstance(value, simdjson.Array):
            result[key] = [_lazy_input(item) for item in value]
        else:
            result[key] = _plain(value)
    return result


def _lazy_input(item: Any) -> Any:
    if not isinstance(item, simdjson.Object):
        return _plain(item)
    fields: dict[str, Any] = {}
    for key in item:
        if key in fields:
            raise _RepeatedKey
        value = item[key]
        fields[key] = (
            value if key == "data" and isinstance(value, simdjson.Array) else _plain(value)
        )
    return fields


def _plain(value: Any) -> Any:
    if isinstance(value, simdjson.Object):
        return value.as_dict()
    if isinstance(value, simdjson.Array):
        return value.as_list()
    return value


# RapidJSON's overflow checks (kParseErrorNumberTooBig, reported at the number's first byte),
# which are all it has: a number past the largest double that passes them reads as infinity.
# - An integer part past 64 bits is summed as a double that must stay below this before each
#   further digit.
_LARGEST_BEFORE_A_DIGIT = 1.7976931348623157e307
# - A positive exponent may not pass 308 plus the fraction digits taken into the significand,
#   whatever the digits (so 0e400 is refused and 1.5e309 is infinity).
# This scanner runs only on what the fast parsers refuse, and they take a zero such as 0e400:
# the server reads it as 0 where Triton refuses it.


def _fraction_digits(integer: bytes, fraction: bytes, minus: bool) -> int:
    """How many fraction digits RapidJSON folds into the significand: while it fits 53 bits
    and then until 17 significant digits (none once the integer part left 64 bits)."""
    if len(integer) > 20 or int(integer) > (2**63 if minus else 2**64 - 1):
        return 0
    value, significant, taken = int(integer), len(integer) - 1, 0
    for digit in fraction:
        if value > 2**53 - 1:
            break
        value = value * 10 + digit - ord("0")
        taken += 1
        significant += value != 0
    seen_nonzero = value != 0
    for digit in fraction[taken:]:
        if significant >= 17:
            break
        taken += 1
        seen_nonzero = seen_nonzero or digit != ord("0")
        significant += seen_nonzero
    return taken


def _exceeds(digits: bytes, limit: int) -> bool:
    """Whether the decimal ``digits`` (of any length) name a number above ``limit``."""
    digits = digits.lstrip(b"0")
    bound = str(limit).encode()
    return len(digits) > len(bound) or (len(digits) == len(bound) and digits > bound)


def _constant(token: str) -> float:
    return float(token.replace("Infinity", "inf").replace("NaN", "nan"))


class _Scanner:
    """A syntax-only walk over the document that stops at RapidJSON's first error."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def peek(self) -> int:
        return self.data[self.pos] if self.pos < len(self.data) else 0

    def skip_ws(self) -> None:
        data, pos = self.data, self.pos
        while pos < len(data) and data[pos] in _WS:
            pos += 1
        self.pos = pos

    def fail(self, message: str, offset: int | None = None) -> None:
        raise JsonSyntaxError(message, self.pos if offset is None else offset)

    def document(self) -> None:
        self.skip_ws()
        if self.pos >= len(self.data):
            self.fail(EMPTY)
        self.value()
        self.skip_ws()
        if self.pos < len(self.data):
            self.fail(ROOT_NOT_SINGULAR)

    def value(self) -> None:
        c = self.peek()
        if c == ord("n"):
            self.literal(b"null")
        elif c == ord("t"):
            self.literal(b"true")
        elif c == ord("f"):
            self.literal(b"false")
        elif c == ord('"'):
            self.string()
        elif c == ord("{"):
            self.obj()
        elif c == ord("["):
            self.array()
        else:
            self.number()

    def literal(self, word: bytes) -> None:
        start = self.pos
        for i, expected in enumerate(word):
            if self.peek() != expected:
                self.fail(INVALID_VALUE, self.pos if i else start)
            self.pos += 1

    def string(self) -> None:
        self.pos += 1
        data = self.data
        while True:
            c = self.peek()
            if self.pos >= len(data):
                self.fail(MISS_QUOTE)
            if c == ord('"'):
                self.pos += 1
                return
            if c == ord("\\"):
                escape_at = self.pos
                self.pos += 1
                e = self.peek()
                if self.pos >= len(data) or e not in _ESCAPES:
                    self.fail(BAD_ESCAPE, escape_at)
                self.pos += 1
                if e == ord("u"):
                    code = self.hex4(escape_at)
                    # A high surrogate must be followed by an escaped low one; a low one
                    # alone is taken (and written back as its three bytes, see dumps).
                    if 0xD800 <= code <= 0xDBFF:
                        if data[self.pos : self.pos + 2] != b"\\u":
                            self.fail(BAD_SURROGATE, escape_at)
                        self.pos += 2
                        if not 0xDC00 <= self.hex4(escape_at) <= 0xDFFF:
                            self.fail(BAD_SURROGATE, escape_at)
            elif c < 0x20:
                self.fail(BAD_ENCODING)
            else:
                self.pos += 1

    def hex4(self, escape_at: int) -> int:
        data = self.data
        digits = data[self.pos : self.pos + 4]
        for index in range(4):
            if index >= len(digits) or digits[index] not in _HEX:
                self.fail(BAD_UNICODE_HEX, escape_at)
        self.pos += 4
        return int(digits, 16)

    def obj(self) -> None:
        self.pos += 1
        self.skip_ws()
        if self.peek() == ord("}"):
            self.pos += 1
            return
        while True:
            if self.peek() != ord('"'):
                self.fail(MISS_NAME)
            self.string()
            self.skip_ws()
            if self.peek() != ord(":"):
                self.fail(MISS_COLON)
            self.pos += 1
            self.skip_ws()
            self.value()
            self.skip_ws()
            c = self.peek()
            if c == ord(","):
                self.pos += 1
                self.skip_ws()
            elif c == ord("}"):
                self.pos += 1
                return
            else:
                self.fail(MISS_COMMA_OBJECT)

    def array(self) -> None:
        self.pos += 1
        self.skip_ws()
        if self.peek() == ord("]"):
            self.pos += 1
            return
        while True:
            self.value()
            self.skip_ws()
            c = self.peek()
            if c == ord(","):
                self.pos += 1
                self.skip_ws()
            elif c == ord("]"):
                self.pos += 1
                return
            else:
                self.fail(MISS_COMMA_ARRAY)

    def number(self) -> None:
        start = self.pos
        if self.peek() == ord("-"):
            self.pos += 1
        c = self.peek()
        # RapidJSON consumes what matches and reports where it stopped.
        if c == ord("N"):
            if not self._consume(b"NaN"):
                self.fail(INVALID_VALUE)
            return
        if c == ord("I"):
            if not self._consume(b"Inf"):
                self.fail(INVALID_VALUE)
            if self.peek() == ord("i") and not self._consume(b"inity"):
                self.fail(INVALID_VALUE)
            return
        if c not in _DIGITS or self.pos >= len(self.data):
            self.fail(INVALID_VALUE)
        begin = self.pos
        if c == ord("0"):
            self.pos += 1
        else:
            self._digits()
        integer = self.data[begin : self.pos]
        if len(integer) > 1 and float(integer[:-1]) >= _LARGEST_BEFORE_A_DIGIT:
            self.fail(NUMBER_TOO_BIG, start)
        fraction = b""
        if self.peek() == ord("."):
            self.pos += 1
            if self.peek() not in _DIGITS or self.pos >= len(self.data):
                self.fail(MISS_FRACTION)
            begin = self.pos
            self._digits()
            fraction = self.data[begin : self.pos]
        if self.peek() in (ord("e"), ord("E")) and self.pos < len(self.data):
            self.pos += 1
            negative = self.peek() == ord("-")
            if self.peek() in (ord("+"), ord("-")):
                self.pos += 1
            if self.peek() not in _DIGITS or self.pos >= len(self.data):
                self.fail(MISS_EXPONENT)
            begin = self.pos
            self._digits()
            limit = 308 + _fraction_digits(integer, fraction, self.data[start] == ord("-"))
            if not negative and _exceeds(self.data[begin : self.pos], limit):
                self.fail(NUMBER_TOO_BIG, start)

    def _consume(self, word: bytes) -> bool:
        """Step over as much of ``word`` as the document holds; whether it held all of it."""
        for byte in word:
            if self.peek() != byte or self.pos >= len(self.data):
                return False
            self.pos += 1
        return True

    def _digits(self) -> None:
        data, pos = self.data, self.pos
        while pos < len(data) and data[pos] in _DIGITS:
            pos += 1
        self.pos = pos
