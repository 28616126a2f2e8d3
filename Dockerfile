# One image for every badnet-prune container: worker, migrate, orchestrator and flower.
#
# Built on TensorFlow's official image of the version pyproject.toml pins, which brings CUDA and cuDNN.
#   GPU (default): docker compose build            -> FROM tensorflow/tensorflow:2.21.0-gpu
#   CPU:           docker build --build-arg TF_VARIANT= -t badnet-prune:cpu .
#                                                   -> FROM tensorflow/tensorflow:2.21.0
# tests/deploy/test_dockerfile.py checks the tag against the tensorflow pin in pyproject.toml.
ARG TF_VERSION=2.21.0
ARG TF_VARIANT=-gpu
FROM tensorflow/tensorflow:${TF_VERSION}${TF_VARIANT}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=1

# The project, installed (not editable) next to the TensorFlow the base image already holds;
# pip keeps that TensorFlow because it satisfies the pin. Extras: flower for the queue monitor.
ARG PIP_EXTRAS=flower
COPY pyproject.toml README.md /tmp/src/
COPY badnet_prune/ /tmp/src/badnet_prune/
COPY pipeline/ /tmp/src/pipeline/
COPY worker/ /tmp/src/worker/
COPY orchestrator/ /tmp/src/orchestrator/
COPY db/ /tmp/src/db/
RUN python3 -m pip install "/tmp/src${PIP_EXTRAS:+[$PIP_EXTRAS]}" \
    && rm -rf /tmp/src

# Runs a worker on one GPU no other worker on this host holds (see the script).
COPY deploy/gpu-slot.sh /usr/local/bin/gpu-slot

# A non-root user owns the directories that compose mounts named volumes on: a fresh named volume
# takes the ownership of the directory it is mounted over. Data must be readable by this uid.
ARG BADNET_UID=10001
RUN chmod 0755 /usr/local/bin/gpu-slot \
    && groupadd --gid "${BADNET_UID}" badnet \
    && useradd --uid "${BADNET_UID}" --gid badnet --create-home --shell /usr/sbin/nologin badnet \
    && mkdir -p /artifacts /cache /reports /gpu-locks \
    && chown badnet:badnet /artifacts /cache /reports /gpu-locks
USER badnet
WORKDIR /home/badnet

ENV BADNET_PRUNE_ARTIFACTS=/artifacts \
    BADNET_PRUNE_CACHE=/cache

ENTRYPOINT ["badnet-prune"]
CMD ["--help"]
