"""Negative IN: execute() raises. Zero: an error response for that request. Otherwise OUT = IN."""

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            value = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
            if value[0] < 0:
                raise ValueError(f"negative input {value[0]}")
            if value[0] == 0:
                responses.append(
                    pb_utils.InferenceResponse(error=pb_utils.TritonError("zero is not accepted"))
                )
                continue
            responses.append(
                pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("OUT", value)])
            )
        return responses
