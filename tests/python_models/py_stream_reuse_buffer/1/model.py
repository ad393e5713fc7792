"""Streams N responses, the i-th filled with i, each written into the same buffer just
after the previous response was sent."""

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.out = np.zeros(256, dtype=np.int32)

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            count = int(pb_utils.get_input_tensor_by_name(request, "N").as_numpy()[0])
            for i in range(count):
                self.out[:] = i
                sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", self.out)]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
