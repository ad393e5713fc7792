"""Business logic scripting: forwards each request to another model (request parameter
"target", default "onnx_add_sub") with exec() and returns that model's outputs."""

import json

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            target = json.loads(request.parameters()).get("target", "onnx_add_sub")
            inner = pb_utils.InferenceRequest(
                model_name=target,
                inputs=[
                    pb_utils.get_input_tensor_by_name(request, "INPUT0"),
                    pb_utils.get_input_tensor_by_name(request, "INPUT1"),
                ],
                requested_output_names=["OUTPUT0", "OUTPUT1"],
            )
            inner_response = inner.exec()
            if inner_response.has_error():
                raise pb_utils.TritonModelException(inner_response.error().message())
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.get_output_tensor_by_name(inner_response, "OUTPUT0"),
                        pb_utils.get_output_tensor_by_name(inner_response, "OUTPUT1"),
                    ]
                )
            )
        return responses
