"""Answers whether its input is writable memory of its own (a copy) or a view of the bytes
the request arrived in; either way it must be writable."""

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
            if not x.flags.writeable:
                raise ValueError("read-only input")
            copied = np.array([x.flags.owndata or x.base is not None and x.base.flags.owndata])
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("COPIED", copied)]))
        return responses
