"""Decoupled: one response per element of IN (OUT = the element, IDX = its position), sent from
a thread of the model's own after execute() returned, then the final flag alone. A negative
element becomes an error response in the stream, and the stream goes on."""

import threading

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.threads = []

    def execute(self, requests):
        for request in requests:
            values = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
            sender = request.get_response_sender()
            thread = threading.Thread(target=self.repeat, args=(values.tolist(), sender))
            thread.start()
            self.threads.append(thread)
        return None

    def repeat(self, values, sender):
        for index, value in enumerate(values):
            if value < 0:
                sender.send(
                    pb_utils.InferenceResponse(
                        error=pb_utils.TritonError(f"negative value {value}")
                    )
                )
                continue
            sender.send(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("OUT", np.array([value], dtype=np.int32)),
                        pb_utils.Tensor("IDX", np.array([index], dtype=np.uint32)),
                    ]
                )
            )
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def finalize(self):
        for thread in self.threads:
            thread.join()
