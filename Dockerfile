# syntax=docker/dockerfile:1
#
# dsocr in a container, for x86_64 (H100-class) and aarch64 (GB10 / DGX Spark) alike.
#
#   docker build -t dsocr .                                 # native profile (transformers >= 5.10.1)
#   docker build -t dsocr-remote --build-arg PROFILE=remote .   # remote-code stack (transformers 4.46.3)
#   docker run --gpus all -v "$PWD:/data" dsocr pdf /data/file.pdf -o /data/out
#
# Recommended extras: `-v dsocr-cache:/cache` keeps downloaded weights and compiled GPU kernels
# (Triton's cache and CUDA's: a start without them compiles them again) between runs (otherwise
# every run gets a fresh anonymous volume), `--rm` deletes the container afterwards, and
# `--user "$(id -u):$(id -g)"` makes the files written to /data yours.
#
# Signals: ENTRYPOINT is exec form, so dsocr itself is PID 1 and receives `docker stop`'s SIGTERM;
# it handles SIGTERM and SIGINT (stops, exit code 130). PID 1 ignores signals it has no handler for,
# so a SIGTERM that comes while Python is still starting, before dsocr sets its handler, is lost;
# `docker run --init` (Docker's bundled tini) closes that gap and also reaps zombies. It is
# optional, so the image carries no tini of its own.
#
# Base image: NGC PyTorch, published for linux/amd64 and linux/arm64 under one tag. Blackwell
# (sm_100/sm_120) needs CUDA 12.8, which the NGC containers reached in 25.01; GB10 (sm_121) is a
# CUDA 13-era platform. 25.12 is built on CUDA 13.1.0 with PyTorch 2.10 and Python 3.12, so it
# serves GB10 and H100 alike; it needs an R580+ driver on the host (DGX OS ships one). For older
# host drivers pass --build-arg BASE_IMAGE=nvcr.io/nvidia/pytorch:<a CUDA 12.8/12.9 tag>; 25.01
# itself ships torch 2.6.0a0, which does not satisfy dsocr's torch>=2.6, so use 25.02 or later.
ARG BASE_IMAGE=nvcr.io/nvidia/pytorch:25.12-py3
FROM ${BASE_IMAGE}

# native: transformers>=5.10.1 (native DeepSeek-OCR-2); remote: the remote-code stack.
ARG PROFILE=native

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PIP_BREAK_SYSTEM_PACKAGES=1

# Install dsocr while keeping the image's own torch build:
# - /tmp/keep-torch.txt pins torch (and torchvision/torchaudio/triton where present) to the
#   versions in the image; it replaces the image-wide /etc/pip/constraint.txt for this step only,
#   as that file pins every preinstalled package and could clash with dsocr's own dependencies;
# - remote: dsocr goes in with --no-deps, then its dependencies with transformers/tokenizers
#   swapped for the remote-code pins;
# - the build fails if the torch stack changed anyway.
# The source is bind-mounted (read-write, changes discarded), so it adds no layer.
RUN --mount=type=bind,source=.,target=/tmp/dsocr-src,rw \
    for pkg in torch torchvision torchaudio triton; do \
        python3 -c "import importlib.metadata as m, sys; print(f'{sys.argv[1]}=={m.version(sys.argv[1])}')" "$pkg" 2>/dev/null || true; \
    done > /tmp/keep-torch.txt \
    && grep -q '^torch==' /tmp/keep-torch.txt \
    && export PIP_CONSTRAINT=/tmp/keep-torch.txt \
    && case "$PROFILE" in \
        native) \
            python3 -m pip install --no-cache-dir /tmp/dsocr-src ;; \
        remote) \
            python3 -c "import re, tomllib; deps = tomllib.load(open('/tmp/dsocr-src/pyproject.toml', 'rb'))['project']['dependencies']; print('\n'.join(d for d in deps if re.split(r'[^A-Za-z0-9_.-]', d, maxsplit=1)[0].lower() not in {'torch', 'transformers', 'tokenizers'}))" > /tmp/dsocr-requirements.txt \
            && printf '%s\n' transformers==4.46.3 tokenizers==0.20.3 einops addict easydict torchvision >> /tmp/dsocr-requirements.txt \
            && python3 -m pip install --no-cache-dir --no-deps /tmp/dsocr-src \
            && python3 -m pip install --no-cache-dir --requirement /tmp/dsocr-requirements.txt ;; \
        *) echo "PROFILE must be native or remote, not '$PROFILE'" >&2; exit 1 ;; \
    esac \
    && for pkg in torch torchvision torchaudio triton; do \
        python3 -c "import importlib.metadata as m, sys; print(f'{sys.argv[1]}=={m.version(sys.argv[1])}')" "$pkg" 2>/dev/null || true; \
    done | diff /tmp/keep-torch.txt - \
    && dsocr version \
    && rm -f /tmp/keep-torch.txt /tmp/dsocr-requirements.txt

# Non-root user dsocr (uid/gid 10001; numeric below so runAsNonRoot-style checks can verify it).
# The cache and the work folder are writable by any uid, so `docker run --user` works too.
RUN groupadd --gid 10001 dsocr \
    && useradd --uid 10001 --gid 10001 --create-home --shell /bin/bash dsocr \
    && install -d -m 1777 /cache /cache/huggingface /cache/triton /cache/nv /data

ENV HF_HOME=/cache/huggingface TRITON_CACHE_DIR=/cache/triton CUDA_CACHE_PATH=/cache/nv
VOLUME /cache
WORKDIR /data
USER 10001:10001

ENTRYPOINT ["dsocr"]
CMD ["--help"]
