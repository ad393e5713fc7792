"""Sleeps SECONDS in execute() (time.sleep, holding its thread) and returns it as SLEPT."""

import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            seconds = pb_utils.get_input_tensor_by_name(request, "SECONDS").as_numpy()
            pb_utils.Logger.log_info(f"py_sleep: sleeping {float(seconds[0])} s")
            time.sleep(float(seconds[0]))
            responses.append(
                pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("SLEPT", seconds)])
            )
        return responses
