"""Upper-cases strings, reports their lengths, and describes the request and the arguments the
model was initialized with (INFO, a JSON string)."""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.args = {
            "keys": sorted(args),
            "model_name": args["model_name"],
            "model_version": args["model_version"],
            "model_instance_kind": args["model_instance_kind"],
            "model_instance_name": args["model_instance_name"],
            "model_instance_device_id": args["model_instance_device_id"],
            "model_repository_basename": os.path.basename(args["model_repository"]),
            "config_name": json.loads(args["model_config"])["name"],
        }

    def execute(self, requests):
        responses = []
        for request in requests:
            text = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy()
            upper = np.array(
                [s.decode("utf-8").upper().encode("utf-8") for s in text], dtype=np.object_
            )
            lengths = np.array([len(s) for s in text], dtype=np.int32)
            info = {
                "args": self.args,
                "request_id": request.request_id(),
                "parameters": json.loads(request.parameters()),
                "requested_output_names": sorted(request.requested_output_names()),
                "input_type": pb_utils.numpy_to_triton_type(text.dtype),
                "input_names": [t.name() for t in request.inputs()],
            }
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("UPPER", upper),
                        pb_utils.Tensor("LENGTHS", lengths),
                        pb_utils.Tensor(
                            "INFO", np.array([json.dumps(info).encode()], dtype=np.object_)
                        ),
                    ]
                )
            )
        return responses
