"""Writes every answer into the one output buffer it keeps, as models that avoid
allocations do: each answer must still carry its own request's values."""

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.out = np.zeros(1024, dtype=np.float32)

    def execute(self, requests):
        responses = []
        for request in requests:
            np.copyto(self.out, pb_utils.get_input_tensor_by_name(request, "IN").as_numpy())
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", self.out)]))
        return responses
