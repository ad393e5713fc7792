"""Custom metrics a Python model declares with pb_utils.MetricFamily, on the metrics
endpoint of a running server, written as tritonserver writes them."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import run_server
from tests.models import model_config, write_python_model

SOURCE = """\
import json

import numpy as np
import triton_python_backend_utils as pb_utils


def attempt(call):
    try:
        call()
    except pb_utils.TritonModelException as exc:
        return "refused: " + str(exc)
    return "accepted"


class TritonPythonModel:
    def initialize(self, args):
        requests = pb_utils.MetricFamily(
            name="custom_requests", description="Requests seen", kind=pb_utils.MetricFamily.COUNTER
        )
        level = pb_utils.MetricFamily(
            name="custom_level", description="The last value", kind=pb_utils.MetricFamily.GAUGE
        )
        sizes = pb_utils.MetricFamily(
            name="custom_size", description="Values seen", kind=pb_utils.MetricFamily.HISTOGRAM
        )
        self.families = (requests, level, sizes)
        self.counter = requests.Metric(labels={"model": "py_custom", "kind": "all"})
        self.gauge = level.Metric(labels={"model": "py_custom"})
        self.histogram = sizes.Metric(labels={"model": "py_custom"}, buckets=[1.0, 2.5, 5.0])
        self.refusals = {
            "negative counter": attempt(lambda: self.counter.increment(-1.0)),
            "set a counter": attempt(lambda: self.counter.set(1.0)),
            "observe on a gauge": attempt(lambda: self.gauge.observe(1.0)),
            "histogram value": attempt(lambda: self.histogram.value()),
            "histogram without buckets": attempt(lambda: sizes.Metric(labels={"x": "1"})),
            "same name, other kind": attempt(
                lambda: pb_utils.MetricFamily("custom_level", "The last value", pb_utils.MetricFamily.COUNTER)
            ),
        }

    def execute(self, requests):
        responses = []
        for request in requests:
            value = float(pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()[0])
            self.counter.increment(1.0)
            self.gauge.set(value)
            self.gauge.increment(0.5)
            self.histogram.observe(value)
            report = {"counter": self.counter.value(), "gauge": self.gauge.value(), **self.refusals}
            out = np.array([json.dumps(report).encode()], dtype=object)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("OUT", out)]))
        return responses
"""


def test_python_model_metrics_on_the_metrics_endpoint(tmp_path: Path) -> None:
    config = model_config(
        "py_custom",
        inputs=[("IN", "FP32", [1])],
        outputs=[("OUT", "BYTES", [1])],
        max_batch_size=0,
        backend="python",
        dynamic_batching=False,
    )
    write_python_model(tmp_path, "py_custom", SOURCE, config)
    with run_server(["--model-repository", str(tmp_path)]) as srv:
        client = httpclient.InferenceServerClient(srv.http_url)
        reports = []
        for value in (2.0, 0.5, 7.0):
            item = httpclient.InferInput("IN", [1], "FP32")
            item.set_data_from_numpy(np.array([value], np.float32))
            reports.append(json.loads(client.infer("py_custom", [item]).as_numpy("OUT")[0]))
        with urllib.request.urlopen(srv.metrics_url, timeout=10) as response:
            text = response.read().decode()

    assert [r["counter"] for r in reports] == [1.0, 2.0, 3.0]
    assert reports[-1]["gauge"] == 7.5
    refusals = {k: v for k, v in reports[0].items() if k not in ("counter", "gauge")}
    assert all(v.startswith("refused: ") for v in refusals.values()), refusals

    lines = [line for line in text.splitlines() if "custom_" in line]
    # A counter keeps its name, with no _total, as in tritonserver; labels in name order.
    assert "# TYPE custom_requests counter" in lines
    assert 'custom_requests{kind="all",model="py_custom"} 3' in lines
    assert "# HELP custom_level The last value" in lines
    assert 'custom_level{model="py_custom"} 7.5' in lines
    assert "# TYPE custom_size histogram" in lines
    histogram = [line for line in lines if line.startswith("custom_size")]
    assert histogram == [
        'custom_size_count{model="py_custom"} 3',
        'custom_size_sum{model="py_custom"} 9.5',
        'custom_size_bucket{model="py_custom",le="1"} 1',
        'custom_size_bucket{model="py_custom",le="2.5"} 2',
        'custom_size_bucket{model="py_custom",le="5"} 2',
        'custom_size_bucket{model="py_custom",le="+Inf"} 3',
    ]
    # The scrape stays valid Prometheus text, with Triton's families still there.
    names = {f.name for f in text_string_to_metric_families(text)}
    assert {"custom_requests", "custom_level", "custom_size", "nv_inference_count"} <= names
