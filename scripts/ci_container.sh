#!/usr/bin/env bash
# CI for the containers: lint the recipes, build the Docker image for real and run the BIDS App
# inside it on a demo dataset, with no network.
#
#   1 tools       brainfm's virtual environment with hadolint, spython, brainfm-make-testdata
#   2 lint        hadolint Dockerfile; spython parses singularity/brainfm.def (FROM the image)
#   3 engine      apt-get install docker.io debootstrap (when missing)
#   4 daemon      start dockerd in the background unless it already runs
#                 (overlay2; then without iptables/bridge; then the vfs storage driver)
#   5 base image  brainfm-base:bookworm made locally with debootstrap (no registry needed),
#                 reused when it exists
#   6 torch wheel the local torch CPU wheel hard-linked (or copied) into wheels/
#   7 build       docker build (legacy builder) of the Dockerfile on that base
#   8 demo data   brainfm-make-testdata on the host
#   9 run         docker run --network none ... participant --participant-label 01, as a
#                 non-root user, with a read-only input
#  10 check       outputs equal tests/data/expected_participant_outputs.txt (sub-01 part),
#                 time series shape, dataset_description.json, exit codes
#
# Usage: scripts/ci_container.sh        (as root; idempotent: safe to run again)
#
# Environment (all optional):
#   BRAINFM_VENV         virtual environment (default .venv; made by scripts/setup_env.sh)
#   BRAINFM_IMAGE        tag of the image to build (default brainfm:ci)
#   BRAINFM_BASE_IMAGE   base image (default brainfm-base:bookworm, made with debootstrap when
#                        missing; another name is pulled from its registry when missing)
#   BRAINFM_TORCH_WHEEL  a torch CPU wheel file (default: searched in $PIP_FIND_LINKS and
#                        /opt/wheels, else downloaded with the host's pip configuration)
#   BRAINFM_CI_DIR       scratch folder for data, outputs and logs (default work/ci_container)
#   DEBIAN_MIRROR        mirror for debootstrap (default http://deb.debian.org/debian)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

VENV="${BRAINFM_VENV:-.venv}"
IMAGE="${BRAINFM_IMAGE:-brainfm:ci}"
BASE_IMAGE="${BRAINFM_BASE_IMAGE:-brainfm-base:bookworm}"
CI_DIR="${BRAINFM_CI_DIR:-work/ci_container}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
TORCH_VERSION="$(sed -n 's/^torch==\([^ ;#]*\).*/\1/p' constraints.txt | head -n 1)"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
RUN_UID=4242            # an arbitrary user id with no account in the image, as on a cluster
export DOCKER_BUILDKIT=0 DEBIAN_FRONTEND=noninteractive NIPYPE_NO_ET=1

mkdir -p "$CI_DIR"
CI_DIR="$(cd "$CI_DIR" && pwd)"
LOG_DIR="$CI_DIR/logs"
mkdir -p "$LOG_DIR"

# ---- step bookkeeping: headers, per-step times, a summary also on failure -------------------
STEP_NAMES=()
STEP_SECS=()
STEP=""
STEP_T0=0
SCRIPT_T0=$(date +%s)
ROOTFS=""

_end_step() {
  if [ -n "$STEP" ]; then
    STEP_NAMES+=("$STEP")
    STEP_SECS+=("$(($(date +%s) - STEP_T0))")
    STEP=""
  fi
}

step() {
  _end_step
  STEP="$1"
  STEP_T0=$(date +%s)
  printf '\n==== [%s] step %d: %s\n' "$(date +%H:%M:%S)" "$((${#STEP_NAMES[@]} + 1))" "$1"
}

die() {
  echo "ci_container: ERROR: $*" >&2
  exit 1
}

_on_exit() {
  local rc=$?
  local failed="$STEP"
  _end_step
  if [ -n "$ROOTFS" ] && [ -d "$ROOTFS" ]; then
    # debootstrap unmounts what it mounted, but never delete through a live mount point
    if ! grep -q " $ROOTFS/" /proc/mounts; then
      rm -rf "$ROOTFS"
    fi
  fi
  printf '\n==== summary (%s)\n' "$(date +%H:%M:%S)"
  local i
  for i in "${!STEP_NAMES[@]}"; do
    printf '  %-12s %5ss\n' "${STEP_NAMES[$i]}" "${STEP_SECS[$i]}"
  done
  printf '  %-12s %5ss\n' "total" "$(($(date +%s) - SCRIPT_T0))"
  if [ "$rc" -ne 0 ]; then
    printf 'ci_container: FAILED (exit %d) in step "%s"; logs in %s\n' "$rc" "$failed" "$LOG_DIR" >&2
  fi
  exit "$rc"
}
trap _on_exit EXIT
trap 'echo "ci_container: command failed (exit $?): $BASH_COMMAND" >&2' ERR

stamp() {  # prefix each line with the time of day, for the logs
  local line
  while IFS= read -r line; do printf '%(%H:%M:%S)T %s\n' -1 "$line"; done
}

docker_ok() {
  timeout 20 docker info >/dev/null 2>&1
}

# ---- 1 tools ----------------------------------------------------------------------------------
step "tools"
if [ ! -x "$VENV/bin/hadolint" ] || [ ! -x "$VENV/bin/spython" ] \
    || [ ! -x "$VENV/bin/brainfm-make-testdata" ]; then
  echo "installing brainfm and its test tools into $VENV (scripts/setup_env.sh)"
  scripts/setup_env.sh
fi
"$VENV/bin/hadolint" --version
echo "spython $("$VENV/bin/spython" --version)"
HOST_VERSION="$("$VENV/bin/brainfm" --version)"
echo "$HOST_VERSION (host)"

# ---- 2 lint -----------------------------------------------------------------------------------
step "lint"
echo "hadolint Dockerfile"
"$VENV/bin/hadolint" Dockerfile
echo "  no findings"
echo "spython: parse singularity/brainfm.def"
"$VENV/bin/python" - <<'EOF'
import re
import sys
from pathlib import Path

from spython.main.parse.parsers import SingularityParser

path = Path("singularity/brainfm.def")
header = dict(re.findall(r"^(Bootstrap|From):\s*(\S+)", path.read_text(), flags=re.M))
recipe = SingularityParser(str(path)).recipe
layer = recipe[next(iter(recipe))]
problems = []
if header.get("Bootstrap") not in ("docker-daemon", "docker"):
    problems.append(f"Bootstrap is {header.get('Bootstrap')!r}, not docker-daemon or docker")
if not str(layer.fromHeader).split("/")[-1].startswith("brainfm:"):
    problems.append(f"From is {layer.fromHeader!r}, not the brainfm image")
if "NIPYPE_NO_ET=1" not in layer.environ:
    problems.append("%environment does not set NIPYPE_NO_ET=1")
if 'brainfm "$@"' not in (layer.cmd or ""):
    problems.append(f"%runscript is {layer.cmd!r}, not exec brainfm \"$@\"")
if problems:
    sys.exit("singularity/brainfm.def: " + "; ".join(problems))
print(f"  Bootstrap: {header['Bootstrap']}  From: {layer.fromHeader}  "
      f"runscript: {layer.cmd}  environment: {len(layer.environ)} variables")
EOF

# ---- 3 engine ---------------------------------------------------------------------------------
step "engine"
need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
if [ "${#need[@]}" -gt 0 ]; then
  [ "$(id -u)" -eq 0 ] || die "installing ${need[*]} needs root"
  echo "apt-get install ${need[*]}"
  apt-get update -qq >"$LOG_DIR/apt.log" 2>&1 || { tail -n 20 "$LOG_DIR/apt.log"; die "apt-get update failed"; }
  apt-get install -y -qq --no-install-recommends "${need[@]}" >>"$LOG_DIR/apt.log" 2>&1 \
    || { tail -n 30 "$LOG_DIR/apt.log"; die "apt-get install ${need[*]} failed"; }
else
  echo "dockerd and debootstrap already installed"
fi
echo "dockerd: $(dockerd --version)"
echo "docker client: $(docker --version)"

# ---- 4 daemon ---------------------------------------------------------------------------------
step "daemon"
if docker_ok; then
  echo "dockerd is already running"
else
  [ "$(id -u)" -eq 0 ] || die "starting dockerd needs root"
  started=0
  attempt=0
  for opts in "--storage-driver=overlay2" \
              "--storage-driver=overlay2 --iptables=false --ip6tables=false --bridge=none" \
              "--storage-driver=vfs --iptables=false --ip6tables=false --bridge=none"; do
    attempt=$((attempt + 1))
    log="$LOG_DIR/dockerd.$attempt.log"
    echo "starting: dockerd $opts   (log: $log)"
    # shellcheck disable=SC2086  # $opts holds several options
    setsid dockerd $opts >"$log" 2>&1 </dev/null &
    pid=$!
    for _ in $(seq 60); do
      if docker_ok; then started=1; break; fi
      kill -0 "$pid" 2>/dev/null || break
      sleep 1
    done
    if [ "$started" -eq 1 ]; then
      echo "dockerd started (pid $pid)"
      break
    fi
    echo "dockerd did not come up with '$opts'; last lines of its log:"
    tail -n 15 "$log" | sed 's/^/    /'
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [ "$started" -ne 1 ]; then
    {
      echo
      echo "################################################################################"
      echo "##  SKIPPING THE CONTAINER BUILD: the Docker daemon cannot run on this machine."
      echo "##  The lint steps passed. dockerd logs: $LOG_DIR/dockerd.*.log"
      echo "################################################################################"
    } >&2
    exit 0
  fi
fi
docker info --format '  server {{.ServerVersion}}, storage driver {{.Driver}}, cgroup {{.CgroupVersion}}'

# ---- 5 base image -----------------------------------------------------------------------------
step "base image"
if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  echo "reusing $BASE_IMAGE"
elif [ "$BASE_IMAGE" = "brainfm-base:bookworm" ]; then
  ROOTFS="$(mktemp -d /var/tmp/brainfm-rootfs.XXXXXX)"
  echo "debootstrap bookworm from $MIRROR into $ROOTFS (log: $LOG_DIR/debootstrap.log)"
  debootstrap --variant=minbase --include=python3,python3-venv,python3-pip \
      bookworm "$ROOTFS" "$MIRROR" >"$LOG_DIR/debootstrap.log" 2>&1 \
    || { tail -n 30 "$LOG_DIR/debootstrap.log"; die "debootstrap failed"; }
  # pip inside the image checks certificates against the system bundle: use the host's
  mkdir -p "$ROOTFS/etc/ssl/certs"
  cp /etc/ssl/certs/ca-certificates.crt "$ROOTFS/etc/ssl/certs/ca-certificates.crt"
  rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
  tar --numeric-owner -C "$ROOTFS" -c . \
    | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["/bin/bash"]' \
        - "$BASE_IMAGE"
  rm -rf "$ROOTFS"
  ROOTFS=""
else
  echo "pulling $BASE_IMAGE"
  docker pull "$BASE_IMAGE"
fi
PY_TAG="$(docker run --rm --network none "$BASE_IMAGE" python3 -c \
  'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
echo "$BASE_IMAGE: $(docker run --rm --network none "$BASE_IMAGE" python3 --version) ($PY_TAG)"

# ---- 6 torch wheel ----------------------------------------------------------------------------
step "torch wheel"
mkdir -p wheels
wheel="${BRAINFM_TORCH_WHEEL:-}"
if [ -z "$wheel" ]; then
  for dir in ${PIP_FIND_LINKS:-} /opt/wheels; do
    for cand in "$dir"/torch-"$TORCH_VERSION"+cpu-"$PY_TAG"-"$PY_TAG"-*linux*x86_64.whl; do
      if [ -f "$cand" ]; then wheel="$cand"; break 2; fi
    done
  done
fi
if [ -n "$wheel" ]; then
  [ -f "$wheel" ] || die "torch wheel $wheel does not exist"
  dest="wheels/$(basename "$wheel")"
  if [ -f "$dest" ] && cmp -s "$wheel" "$dest"; then
    echo "wheels/ already holds $(basename "$wheel")"
  else
    ln -f "$wheel" "$dest" 2>/dev/null || cp -f "$wheel" "$dest"
    echo "$wheel -> $dest"
  fi
else
  echo "no local torch $TORCH_VERSION CPU wheel for $PY_TAG: asking the host's pip for one"
  "$VENV/bin/python" -m pip download -q --no-deps --only-binary=:all: \
    --python-version "${PY_TAG#cp}" --platform manylinux_2_28_x86_64 \
    -d wheels "torch==$TORCH_VERSION"
fi
found=(wheels/torch-"$TORCH_VERSION"*.whl)
[ -f "${found[0]}" ] || die "no torch $TORCH_VERSION wheel in wheels/"
case "${found[0]}" in
  *+cpu*) ;;
  *) die "${found[0]} is not a CPU build of torch (it would pull the CUDA stack)";;
esac
ls -l wheels/

# ---- 7 build ----------------------------------------------------------------------------------
step "build"
# A snapshot of the build context: both docker build calls below (and so the image) see the
# same sources even while the working tree is being edited.
CONTEXT="$CI_DIR/context"
rm -rf "$CONTEXT"
mkdir -p "$CONTEXT/wheels"
cp -a brainfm pyproject.toml README.md constraints.txt Dockerfile .dockerignore "$CONTEXT/"
for f in LICENSE*; do if [ -e "$f" ]; then cp -a "$f" "$CONTEXT/"; fi; done
for f in wheels/*.whl; do ln -f "$f" "$CONTEXT/$f" 2>/dev/null || cp -a "$f" "$CONTEXT/$f"; done
build_args=(--network host --force-rm
            --build-arg "BASE_IMAGE=$BASE_IMAGE"
            --build-arg "TORCH_SOURCE=wheels"
            --build-arg "TORCH_VERSION=$TORCH_VERSION"
            --build-arg "IMAGE_TAG=$IMAGE")
echo "docker build ${build_args[*]} -t $IMAGE $CONTEXT   (log: $LOG_DIR/build.log)"
# the builder stage gets a tag of its own, so that the next run finds it in the build cache
: >"$LOG_DIR/build.log"
docker build "${build_args[@]}" --target builder -t "$IMAGE-builder" "$CONTEXT" 2>&1 \
  | stamp >>"$LOG_DIR/build.log" \
  || { tail -n 40 "$LOG_DIR/build.log"; die "docker build (builder stage) failed"; }
echo "  builder stage done after $(($(date +%s) - STEP_T0))s"
docker build "${build_args[@]}" -t "$IMAGE" "$CONTEXT" 2>&1 | stamp >>"$LOG_DIR/build.log" \
  || { tail -n 40 "$LOG_DIR/build.log"; die "docker build failed"; }
if grep -q -- '---> Using cache' "$LOG_DIR/build.log" && ! grep -q 'Collecting' "$LOG_DIR/build.log"; then
  echo "  (everything came from the build cache)"
fi
docker run --rm --network none --entrypoint python "$IMAGE" -c \
  'import sys, torch, nipype, nilearn; print(f"  Python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), nipype {nipype.__version__}, nilearn {nilearn.__version__}")'
# images of earlier runs, untagged by this one
docker image prune -f --filter "label=org.opencontainers.image.title=brainfm" >/dev/null
docker image prune -f --filter "label=org.opencontainers.image.title=brainfm-builder" >/dev/null
size=$(docker image inspect -f '{{.Size}}' "$IMAGE")
echo "$IMAGE: $((size / 1000000)) MB (base $BASE_IMAGE: $(($(docker image inspect -f '{{.Size}}' "$BASE_IMAGE") / 1000000)) MB)"
IMAGE_VERSION="$(docker run --rm --network none "$IMAGE" --version)"
echo "$IMAGE_VERSION (image)"
[ "$IMAGE_VERSION" = "$HOST_VERSION" ] || die "image reports '$IMAGE_VERSION', the source tree '$HOST_VERSION'"

# ---- 8 demo data ------------------------------------------------------------------------------
step "demo data"
DATA="$CI_DIR/data"
"$VENV/bin/brainfm-make-testdata" "$DATA" --subjects 2 --overwrite >"$LOG_DIR/testdata.log" 2>&1 \
  || { tail -n 20 "$LOG_DIR/testdata.log"; die "brainfm-make-testdata failed"; }
echo "$(find "$DATA/bids" -type f | wc -l) files in $DATA/bids"
chmod -R a+rX "$DATA"

# ---- 9 run ------------------------------------------------------------------------------------
step "run"
OUT="$CI_DIR/out"
rm -rf "$OUT"
mkdir -p "$OUT"
chown "$RUN_UID:$RUN_UID" "$OUT"
run_cmd=(docker run --rm --network none --user "$RUN_UID:$RUN_UID"
         -v "$DATA/bids:/bids:ro" -v "$OUT:/out"
         "$IMAGE" /bids /out participant --participant-label 01
         --atlases CC200 Schaefer2018-200 --nprocs 2 --omp-nthreads 1)
echo "${run_cmd[*]}"
rc=0
"${run_cmd[@]}" 2>&1 | tee "$LOG_DIR/run.log" || rc=$?   # pipefail: docker's exit status
[ "$rc" -eq 0 ] || die "the containerised participant run exited with $rc"

# ---- 10 check ---------------------------------------------------------------------------------
step "check"
"$VENV/bin/python" - "$OUT" "$IMAGE" tests/data/expected_participant_outputs.txt <<'EOF'
import csv
import json
import re
import sys
from pathlib import Path

out, image, expected_file = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])


def participant(path: str) -> str | None:
    """The participant a top-level output belongs to (sub-01/..., sub-01.html), or None."""
    match = re.match(r"sub-([A-Za-z0-9]+)(/|\.|_)", path)
    return match.group(1) if match else None


# the expected list is for participants 01 and 02: keep the shared files and sub-01's
expected = sorted(p for p in expected_file.read_text().split() if participant(p) in (None, "01"))
# run ids (brainfm.bidsapp.records.new_run_id) are written RUNID in the list; lock files
# (.brainfm.lock, .brainfm-locks/) are not outputs (tests/output_tree.py skips them too)
found = sorted(re.sub(r"\d{8}-\d{6}_[0-9a-f]{8}", "RUNID", p.relative_to(out).as_posix())
               for p in out.rglob("*") if p.is_file() and p.name != ".brainfm.lock"
               and ".brainfm-locks" not in p.relative_to(out).parts)
missing = sorted(set(expected) - set(found))
extra = sorted(set(found) - set(expected))
if missing or extra:
    sys.exit(f"outputs differ from {expected_file} (sub-01 part):\n  missing: {missing}\n"
             f"  unexpected: {extra}")
print(f"  {len(found)} files, as listed in {expected_file} (sub-01 part)")

func = out / "sub-01" / "func"
for atlas, n_rois in (("CC200", 200), ("Schaefer200", 200)):
    tsv = func / f"sub-01_task-rest_space-MNI152NLin6Asym_atlas-{atlas}_stat-mean_timeseries.tsv"
    with tsv.open() as fh:
        rows = list(csv.reader(fh, delimiter="\t"))
    if len(rows[0]) != n_rois or len(rows) < 2:
        sys.exit(f"{tsv.name}: {len(rows[0])} columns, {len(rows) - 1} rows")
    print(f"  {tsv.name}: {len(rows) - 1} volumes x {len(rows[0])} ROIs")

desc = json.loads((out / "dataset_description.json").read_text())
generated = desc["GeneratedBy"][0]
if desc.get("DatasetType") != "derivative" or generated.get("Name") != "brainfm":
    sys.exit(f"dataset_description.json: {desc}")
container = generated.get("Container", {})
if container.get("Type") != "docker" or container.get("Tag") != image:
    sys.exit(f"dataset_description.json: GeneratedBy.Container is {container}, "
             f"expected docker {image}")
print(f"  dataset_description.json: GeneratedBy {generated['Name']} {generated.get('Version')}, "
      f"Container {container}")
EOF
owners="$(find "$OUT" -mindepth 1 ! -user "$RUN_UID" | head -n 3)"
[ -z "$owners" ] || die "files not owned by the run's user $RUN_UID: $owners"
echo "  all outputs owned by uid $RUN_UID (the container ran as a non-root user)"
echo "exit code when the filters select nothing (--participant-label 99): expect 18"
rc=0
docker run --rm --network none --user "$RUN_UID:$RUN_UID" -v "$DATA/bids:/bids:ro" \
  "$IMAGE" /bids /tmp/out participant --participant-label 99 >"$LOG_DIR/run_nothing.log" 2>&1 \
  || rc=$?
tail -n 1 "$LOG_DIR/run_nothing.log" | sed 's/^/  /'
[ "$rc" -eq 18 ] || die "expected exit 18, got $rc (log: $LOG_DIR/run_nothing.log)"
echo "  exit 18"
if find "$OUT" -name '*_desc-brainfm_predictions.tsv' | grep -q .; then
  echo "group level (the image's default model made predictions)"
  rc=0
  docker run --rm --network none --user "$RUN_UID:$RUN_UID" -v "$DATA/bids:/bids:ro" \
    -v "$OUT:/out" "$IMAGE" /bids /out group --skip-bids-validation >"$LOG_DIR/run_group.log" 2>&1 \
    || rc=$?
  tail -n 3 "$LOG_DIR/run_group.log" | sed 's/^/  /'
  [ "$rc" -eq 0 ] || die "the containerised group level exited with $rc (log: $LOG_DIR/run_group.log)"
else
  echo "group level not run: the image has no default model, so there are no predictions to"
  echo "aggregate (it runs here as soon as brainfm/data/models/default/ ships weights)"
fi
_end_step
echo
echo "ci_container: OK ($IMAGE built on $BASE_IMAGE and ran the participant level with no network)"
