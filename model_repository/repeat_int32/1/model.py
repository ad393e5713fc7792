"""Decoupled repeat: one response per element of IN.

Response i carries OUT = [IN[i]] and IDX = [i] and goes out DELAY[i] milliseconds after the
previous one; WAIT[0] milliseconds after the last response the request is released with the
final flag. Each request is answered from its own thread, so requests overlap.
"""

import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.workers = []

    def execute(self, requests):
        self.workers = [t for t in self.workers if t.is_alive()]
        for request in requests:
            worker = threading.Thread(target=self.repeat, args=(request,), daemon=True)
            worker.start()
            self.workers.append(worker)
        return None

    def repeat(self, request):
        sender = request.get_response_sender()
        values = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
        delays = pb_utils.get_input_tensor_by_name(request, "DELAY").as_numpy()
        wait = pb_utils.get_input_tensor_by_name(request, "WAIT").as_numpy()
        if delays.shape != values.shape:
            error = pb_utils.TritonError(
                f"expected DELAY to have the shape of IN {list(values.shape)}, "
                f"got {list(delays.shape)}"
            )
            sender.send(
                pb_utils.InferenceResponse(error=error),
                flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
            )
            return
        for index, (value, delay) in enumerate(zip(values, delays)):
            time.sleep(int(delay) / 1000)
            if sender.is_cancelled():
                break
            out = pb_utils.Tensor("OUT", np.array([value], dtype=np.int32))
            idx = pb_utils.Tensor("IDX", np.array([index], dtype=np.uint32))
            sender.send(pb_utils.InferenceResponse(output_tensors=[out, idx]))
        time.sleep(int(wait[0]) / 1000)
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def finalize(self):
        for worker in self.workers:
            worker.join()
