# brainfm BIDS App container image (CPU build).
#
#   docker build -t brainfm:latest .
#   docker run --rm -v /data/bids:/bids:ro -v /data/out:/out brainfm:latest /bids /out participant
#
# Works with the classic (legacy) builder and with BuildKit: no RUN --mount, no heredocs.
#
# Build arguments
#   BASE_IMAGE     any image with Python 3.10+ and its venv module as `python3`
#                  (default: the public python:3.11-slim-bookworm; CI uses a debootstrap image)
#   TORCH_SOURCE   where torch comes from:
#                    auto   (default) a torch wheel in ./wheels/ of the build context when there
#                           is one, else TORCH_INDEX_URL
#                    wheels only ./wheels/ (the build fails when no torch wheel is there)
#                    index  only TORCH_INDEX_URL
#   TORCH_VERSION  torch release to install (default 2.13.0, the project's pin)
#   TORCH_INDEX_URL  package index of torch builds: CPU-only by default (never the CUDA stack
#                  by accident); e.g. https://download.pytorch.org/whl/cu128 for a GPU image
#   BIDS_VALIDATOR_VERSION  bids-validator-deno release bundled for input validation
#   IMAGE_TAG      the tag recorded in the outputs' dataset_description.json (default brainfm:latest)

ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------
# Stage 1: build a self-contained virtual environment in /opt/venv. The build context (and the
# torch wheel in it) stays in this stage; only the environment is copied to the final image.
# ---------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS builder

LABEL org.opencontainers.image.title="brainfm-builder"

ARG TORCH_SOURCE=auto
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG BIDS_VALIDATOR_VERSION=3.0.2

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

SHELL ["/bin/bash", "-euo", "pipefail", "-c"]

COPY . /tmp/src
WORKDIR /tmp/src

# torch first (CPU build), then brainfm with its pinned dependencies: an unpinned `torch>=2.2`
# resolved from scratch would pull the newest torch with the whole CUDA stack. The byte-code
# that pip compiles is kept: without it every start (and every nipype worker) spends ~8 s more
# compiling torch, nipype and nilearn, and a read-only Apptainer image could never cache it.
RUN python3 -m venv /opt/venv; \
    shopt -s nullglob; \
    found=(wheels/torch-"${TORCH_VERSION}"*.whl); \
    wheel="${found[0]:-}"; \
    case "${TORCH_SOURCE}" in \
      auto) if [ -n "${wheel}" ]; then use=wheels; else use=index; fi ;; \
      wheels) use=wheels ;; \
      index) use=index ;; \
      *) echo "TORCH_SOURCE must be auto, wheels or index, not '${TORCH_SOURCE}'" >&2; exit 64 ;; \
    esac; \
    if [ "${use}" = wheels ]; then \
      if [ -z "${wheel}" ]; then \
        echo "TORCH_SOURCE=wheels but no torch-${TORCH_VERSION}*.whl in ./wheels/ of the build context" >&2; \
        exit 66; \
      fi; \
      echo "torch: local wheel ${wheel}"; \
      /opt/venv/bin/pip install --find-links wheels "${wheel}"; \
    else \
      echo "torch: torch==${TORCH_VERSION} from ${TORCH_INDEX_URL}"; \
      /opt/venv/bin/pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"; \
    fi; \
    grep -v '^torch' constraints.txt > /tmp/constraints-notorch.txt; \
    /opt/venv/bin/pip install -c /tmp/constraints-notorch.txt \
      "/tmp/src" "bids-validator-deno==${BIDS_VALIDATOR_VERSION}"; \
    case "${use}:${wheel}:${TORCH_INDEX_URL%/}" in \
      wheels:*+cpu*|index:*/cpu) cpu_only=1 ;; \
      *) cpu_only=0 ;; \
    esac; \
    /opt/venv/bin/python -c "import sys, torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda); sys.exit('a CUDA build of torch where the CPU build was asked for' if int(sys.argv[1]) and torch.version.cuda else 0)" "${cpu_only}"

# ---------------------------------------------------------------------------------------------
# Stage 2: the runtime image.
# ---------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE}

# Recorded in dataset_description.json (GeneratedBy.Container.Tag) of every output dataset.
ARG IMAGE_TAG=brainfm:latest

LABEL org.opencontainers.image.title="brainfm" \
      org.opencontainers.image.description="BIDS App: brain age and fluid intelligence from resting-state fMRI" \
      org.opencontainers.image.licenses="Apache-2.0"

SHELL ["/bin/bash", "-euo", "pipefail", "-c"]

# A home usable by any user id (docker run -u "$(id -u):$(id -g)", Apptainer/Singularity), and
# /work, the default nipype work dir when the output folder is mounted at /out (/out/../work),
# writable by anyone like /tmp.
RUN useradd --create-home --home-dir /home/brainfm --shell /bin/bash --user-group brainfm; \
    install -d -m 1777 /work

COPY --from=builder /opt/venv /opt/venv

ENV PATH="/opt/venv/bin:${PATH}" \
    VIRTUAL_ENV="/opt/venv" \
    HOME="/home/brainfm" \
    BRAINFM_IMAGE_TAG="${IMAGE_TAG}" \
    NIPYPE_NO_ET=1 \
    OMP_NUM_THREADS=1 \
    OPENBLAS_NUM_THREADS=1 \
    MKL_NUM_THREADS=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    LANG="C.UTF-8" \
    LC_ALL="C.UTF-8"

WORKDIR /home/brainfm

# Import smoke test (fails the build when the environment is broken); matplotlib's font cache
# is built once here (in $HOME), not at every start of the reports; then open up the home.
RUN brainfm --version; \
    brainfm-train --version; \
    bids-validator-deno --version; \
    python -c "import brainfm.workflows.base, brainfm.models, brainfm.atlases, nipype, nilearn, torch"; \
    python -c "import importlib.util as u; u.find_spec('matplotlib') and __import__('matplotlib.font_manager')"; \
    chmod -R go=u /home/brainfm

ENTRYPOINT ["brainfm"]
