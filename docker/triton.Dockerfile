# Triton for lungscreen: NVIDIA's Triton 24.10 (= tritonserver 2.51, the version the local
# server and the tests use; TensorRT 10.5) plus what the CPU profile needs and the model
# repository. Build from the repository root:
#   docker build -f docker/triton.Dockerfile -t ghcr.io/lungscreen/lungscreen-triton:0.1.0 .
FROM nvcr.io/nvidia/tritonserver:24.10-py3

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

# CPU profile: each model's config names EXECUTION_ENV_PATH=$$TRITON_MODEL_DIRECTORY/python_env,
# an environment with numpy<2 (the Python-backend stub mis-serializes numpy 2) and ONNX Runtime.
# It is built with the image's own Python, the one its Python-backend stub was built for.
# Same pins as requirements/triton-server.txt (less the server wheel: the image has the server).
RUN apt-get update && apt-get install -y --no-install-recommends python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/lungscreen/python_env \
    && /opt/lungscreen/python_env/bin/pip install "numpy==1.26.4" "onnxruntime>=1.20,<2"

# stage-repository SRC DEST ENV: a symlink mirror of SRC with a python_env link per model (the
# chart's init container runs it for the CPU profile; pipeline/serving.py does the same locally).
COPY --chmod=0755 docker/stage-repository.sh /opt/lungscreen/bin/stage-repository

# The repository as released (configs; version folders once exported). The chart serves a PVC
# or an S3 URL instead; this copy serves `docker run` on a single machine:
#   docker run --gpus all -p 8000-8002:8000-8002 IMAGE
COPY model_repository /opt/lungscreen/model_repository

# NGC's Triton images have the non-root user triton-server (uid 1000).
USER 1000
CMD ["tritonserver", "--model-repository=/opt/lungscreen/model_repository", "--model-config-name=gpu"]
