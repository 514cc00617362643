"""Triton Python-backend model that runs a version folder's ONNX file with ONNX Runtime.

This is the CPU deployment profile of every lungscreen model. It runs inside the server's
execution environment (numpy<2, onnxruntime), never in the pipeline's, and is copied into
each version folder as ``model.py`` by ``export.repository.write_version``.

All requests of one dynamic batch are concatenated into a single ONNX Runtime call, so
Triton's dynamic batching pays off on CPU as it does with TensorRT on GPU.
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """Loads ``model.onnx`` from the version folder and serves it batch by batch."""

    def initialize(self, args):
        import onnxruntime as ort

        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        onnx_path = os.path.join(version_dir, params.get("onnx_filename", "model.onnx"))
        if not os.path.isfile(onnx_path):
            raise pb_utils.TritonModelException(f"ONNX file missing: {onnx_path}")
        options = ort.SessionOptions()
        threads = int(params.get("intra_op_threads", "0") or 0)
        if threads > 0:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
        self.input_names = [t["name"] for t in config["input"]]
        self.output_names = [t["name"] for t in config["output"]]
        onnx_inputs = {i.name for i in self.session.get_inputs()}
        missing = [n for n in self.input_names if n not in onnx_inputs]
        if missing:
            raise pb_utils.TritonModelException(
                f"config inputs {missing} are not inputs of {onnx_path} (it has {sorted(onnx_inputs)})"
            )
        self.output_dtypes = {
            t["name"]: pb_utils.triton_string_to_numpy(t["data_type"]) for t in config["output"]
        }

    def execute(self, requests):
        try:
            arrays = [
                {n: pb_utils.get_input_tensor_by_name(r, n).as_numpy() for n in self.input_names}
                for r in requests
            ]
            sizes = [a[self.input_names[0]].shape[0] for a in arrays]
            feed = {n: np.concatenate([a[n] for a in arrays], axis=0) for n in self.input_names}
            results = self.session.run(self.output_names, feed)
        except Exception as e:  # every failure goes back to the caller, not only to the log
            error = pb_utils.TritonError(f"ONNX Runtime failed: {e}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        responses = []
        start = 0
        for size in sizes:
            tensors = [
                pb_utils.Tensor(
                    name, np.ascontiguousarray(out[start : start + size].astype(self.output_dtypes[name]))
                )
                for name, out in zip(self.output_names, results, strict=True)
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += size
        return responses

    def finalize(self):
        self.session = None
