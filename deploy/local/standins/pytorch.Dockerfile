# Stand-in for pytorch/pytorch:2.4.1-cuda12.4-cudnn9-runtime, for proving the steps of
# deploy/Dockerfile.train only: Debian's Python 3.11 with the CPU build of torch 2.13.0
# (the version the train extra pins), installed from the wheels beside this file, which
# `deploy/local/stack.sh train-image` downloads with the host's pip. What the trainer's
# Dockerfile uses of the upstream image: python and pip on the PATH, installing into the
# system site as root, torch importable, useradd. Not CUDA, and not torch 2.4.1.
FROM cnclip-standin/debian:bookworm
COPY wheels /tmp/wheels
RUN apt-get update -q \
    && apt-get install -y -q --no-install-recommends \
        python3.11 python3.11-venv python3-pip ca-certificates \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb \
    && rm -f /usr/lib/python3.11/EXTERNALLY-MANAGED \
    && for name in python python3; do ln -s /usr/bin/python3.11 /usr/local/bin/$name; done \
    && for name in pip pip3; do ln -s /usr/bin/pip3 /usr/local/bin/$name; done \
    && pip install --no-cache-dir --no-index --find-links /tmp/wheels torch==2.13.0 \
    && rm -rf /tmp/wheels
ENV LANG=C.UTF-8
WORKDIR /workspace
