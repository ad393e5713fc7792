"""The PyTorch backend's handling of input memory, without a server."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from server.backends import pytorch
from server.backends.pytorch import PyTorchInstance
from server.errors import Code, ServerError
from server.repository.view import ModelView, TensorSpec


def _view() -> ModelView:
    return ModelView(
        name="m",
        version="1",
        platform="pytorch_libtorch",
        backend="pytorch",
        max_batch_size=0,
        inputs={"x": TensorSpec("x", "FP32", (4,)), "h": TensorSpec("h", "BF16", (4,))},
        outputs={},
    )


# The server's own filter for torch's warning is replaced by pytest's while a test runs.
@pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")
def test_pytorch_inputs_for_a_device_are_read_in_place_and_for_the_cpu_copied() -> None:
    # A request's tensor may be a read-only view of the bytes it arrived in. On the CPU the
    # module gets a writable copy it may change; for a device the upload is that copy, so the
    # host array is read in place ("meta" stands in for a GPU: it uploads nothing).
    view = _view()
    frozen = np.frombuffer(bytes(range(16)), np.float32)
    bits = np.frombuffer(bytes(range(8)), np.uint16)

    def instance(device: str) -> PyTorchInstance:
        return PyTorchInstance(torch, None, torch.device(device), view, ("positional", []), True)

    on_device = instance("meta")
    assert on_device._tensor(frozen, "x").data_ptr() == frozen.ctypes.data
    assert on_device._tensor(bits, "h").data_ptr() == bits.ctypes.data
    assert on_device._tensor(bits, "h").dtype == torch.bfloat16
    on_cpu = instance("cpu")._tensor(frozen, "x")
    assert on_cpu.data_ptr() != frozen.ctypes.data
    on_cpu.add_(1)  # the module's own copy
    assert frozen.tolist() == np.frombuffer(bytes(range(16)), np.float32).tolist()


def test_device_outputs_come_back_into_page_locked_memory() -> None:
    asked: list[bool] = []

    class RecordingTorch:
        """torch, with page-locked allocations recorded instead of asked of a driver."""

        def __getattr__(self, name: str) -> object:
            return getattr(torch, name)

        def empty(self, shape: object, dtype: object, pin_memory: bool) -> torch.Tensor:
            asked.append(pin_memory)
            return torch.empty(shape, dtype=dtype)  # type: ignore[call-overload]

    instance = PyTorchInstance(
        RecordingTorch(), None, torch.device("meta"), _view(), ("positional", []), True
    )
    value = torch.arange(6, dtype=torch.float32).reshape(2, 3).t()  # strided, as outputs may be
    array = instance._download(value)
    assert asked == [True]
    assert array.tolist() == value.tolist() and array.flags.c_contiguous


# --- INTRA_OP_THREAD_COUNT and INTER_OP_THREAD_COUNT -----------------------------------------
class ThreadCounts:
    """torch's two thread-count setters, recorded; ``refuse_interop`` raises as torch does
    once its inter-op pool has started."""

    def __init__(self, refuse_interop: bool = False, intra: int = 4) -> None:
        self.calls: list[tuple[str, int]] = []
        self.refuse_interop = refuse_interop
        self.intra = intra

    def get_num_threads(self) -> int:
        return self.intra

    def set_num_threads(self, count: int) -> None:
        self.calls.append(("intra", count))
        self.intra = count

    def set_num_interop_threads(self, count: int) -> None:
        if self.refuse_interop:
            raise RuntimeError("cannot set number of interop threads after parallel work")
        self.calls.append(("inter", count))


@pytest.fixture()
def fresh_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pytorch, "_threads_set", {})
    monkeypatch.setattr(pytorch, "limited_cpus", lambda: None)  # a machine of its own


@pytest.mark.usefixtures("fresh_counts")
def test_the_first_model_that_gives_a_thread_count_sets_it_for_the_process(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake = ThreadCounts()
    both = {"INTRA_OP_THREAD_COUNT": "3", "INTER_OP_THREAD_COUNT": "2"}
    pytorch.apply_thread_counts(fake, "first", both)
    assert fake.calls == [("intra", 3), ("inter", 2)]
    pytorch.apply_thread_counts(fake, "same", both)
    with caplog.at_level("WARNING", logger="server.backends.pytorch"):
        pytorch.apply_thread_counts(fake, "other", {"INTRA_OP_THREAD_COUNT": "8"})
    assert fake.calls == [("intra", 3), ("inter", 2)], "later models do not change it"
    assert "INTRA_OP_THREAD_COUNT of model 'other' (8) is ignored" in caplog.text
    assert "set to 3 by model 'first'" in caplog.text


@pytest.mark.usefixtures("fresh_counts")
def test_zero_or_no_count_leaves_torchs_default_and_a_word_is_refused() -> None:
    fake = ThreadCounts()
    pytorch.apply_thread_counts(fake, "m", {"INTRA_OP_THREAD_COUNT": "0", "OTHER": "x"})
    pytorch.apply_thread_counts(fake, "m", {"INTER_OP_THREAD_COUNT": "-1"})
    assert fake.calls == []
    with pytest.raises(ServerError) as refused:
        pytorch.apply_thread_counts(fake, "m", {"INTER_OP_THREAD_COUNT": "four"})
    assert refused.value.code is Code.INVALID_ARG
    assert "parameter 'INTER_OP_THREAD_COUNT' of model 'm' must be an integer, got 'four'" in str(
        refused.value
    )


@pytest.mark.usefixtures("fresh_counts")
def test_an_inter_op_count_torch_refuses_is_a_warning_and_stays_open(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level("WARNING", logger="server.backends.pytorch"):
        pytorch.apply_thread_counts(
            ThreadCounts(refuse_interop=True), "late", {"INTER_OP_THREAD_COUNT": "2"}
        )
    assert "INTER_OP_THREAD_COUNT of model 'late' (2) cannot be applied" in caplog.text
    fake = ThreadCounts()
    pytorch.apply_thread_counts(fake, "next", {"INTER_OP_THREAD_COUNT": "2"})
    assert fake.calls == [("inter", 2)]


@pytest.mark.usefixtures("fresh_counts")
def test_a_process_limited_to_fewer_cpus_gets_no_more_intra_op_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pytorch, "limited_cpus", lambda: 2)  # e.g. a pod's CPU quota
    fake = ThreadCounts(intra=8)
    pytorch.apply_thread_counts(fake, "m", {})
    assert fake.calls == [("intra", 2)]
    pytorch.apply_thread_counts(fake, "n", {})
    assert fake.calls == [("intra", 2)], "already within the limit"
    pytorch.apply_thread_counts(fake, "given", {"INTRA_OP_THREAD_COUNT": "6"})
    pytorch.apply_thread_counts(fake, "later", {})
    assert fake.calls == [("intra", 2), ("intra", 6)], "a model's own count is kept"
    small = ThreadCounts(intra=1)
    monkeypatch.setattr(pytorch, "_threads_set", {})
    pytorch.apply_thread_counts(small, "m", {})
    assert small.calls == [], "never raised to the limit"
