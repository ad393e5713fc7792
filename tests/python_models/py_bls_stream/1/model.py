"""Calls the decoupled model "py_repeat" with exec(decoupled=True) and collects every value it
streams back (COLLECTED), with the number of responses the iterator gave (RESPONSES)."""

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            inner = pb_utils.InferenceRequest(
                model_name="py_repeat",
                inputs=[pb_utils.get_input_tensor_by_name(request, "IN")],
                requested_output_names=["OUT"],
            )
            collected = []
            count = 0
            for inner_response in inner.exec(decoupled=True):
                count += 1
                if inner_response.has_error():
                    raise pb_utils.TritonModelException(inner_response.error().message())
                out = pb_utils.get_output_tensor_by_name(inner_response, "OUT")
                if out is not None:
                    collected.extend(out.as_numpy().tolist())
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("COLLECTED", np.array(collected, dtype=np.int32)),
                        pb_utils.Tensor("RESPONSES", np.array([count], dtype=np.int32)),
                    ]
                )
            )
        return responses
