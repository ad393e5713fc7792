"""A coroutine execute(): two concurrent async_exec() calls to "onnx_add_sub", the second with
the inputs swapped. OUTPUT0 = INPUT0 + INPUT1 (first call), OUTPUT1 = INPUT1 - INPUT0 (second)."""

import asyncio

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    async def execute(self, requests):
        responses = []
        for request in requests:
            a = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            b = pb_utils.get_input_tensor_by_name(request, "INPUT1").as_numpy()

            def call(x, y):
                return pb_utils.InferenceRequest(
                    model_name="onnx_add_sub",
                    inputs=[pb_utils.Tensor("INPUT0", x), pb_utils.Tensor("INPUT1", y)],
                    requested_output_names=["OUTPUT0", "OUTPUT1"],
                ).async_exec()

            first, second = await asyncio.gather(call(a, b), call(b, a))
            for inner in (first, second):
                if inner.has_error():
                    raise pb_utils.TritonModelException(inner.error().message())
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.get_output_tensor_by_name(first, "OUTPUT0"),
                        pb_utils.Tensor(
                            "OUTPUT1",
                            pb_utils.get_output_tensor_by_name(second, "OUTPUT1").as_numpy(),
                        ),
                    ]
                )
            )
        return responses
