#!/usr/bin/env bash
# Native install of dsocr on Linux x86_64 and aarch64 (incl. NVIDIA GB10 / DGX Spark).
# Run `scripts/install.sh --help` for the options. Every system change is announced on a line
# starting with "change:"; --dry-run prints those lines and the commands, and changes nothing.
# See SYSTEM_CHANGES.md for how to check and undo each change.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TORCH_BASE="https://download.pytorch.org/whl"
MINICONDA_BASE="https://repo.anaconda.com/miniconda"
# The remote-code stack that deepseek-ai/DeepSeek-OCR(-2)'s own modelling code is written for.
REMOTE_PINS=(transformers==4.46.3 tokenizers==0.20.3 einops addict easydict)
REMOTE_REPLACES=(torch transformers tokenizers)   # pyproject deps the remote pins stand in for

USE_VENV=0 CPU_ONLY=0 DEV=0 DRY_RUN=0 ASSUME_YES=0
PROFILE=native
PREFIX="${HOME}/miniconda3"
TORCH_INDEX=""
PYTHON_BIN="${PYTHON:-python3}"

# Filled in by the steps below.
CONDA_BIN="" ENV_NAME="" ENV_DIR="" ENV_PY="" GPU_SUMMARY="none" INSTALLER=""
trap '[[ -z $INSTALLER ]] || ((DRY_RUN)) || rm -f "$INSTALLER"' EXIT

usage() {
  cat <<'EOF'
Usage: scripts/install.sh [options]

Installs dsocr with a PyTorch build that matches this machine's GPU.

  --venv             use a plain Python venv (.venv, or .venv-remote) instead of conda
  --cpu              install the CPU-only torch build, even when a GPU is present
  --profile NAME     native (default): transformers>=5.10.1, native DeepSeek-OCR-2 engine
                     remote: the remote-code stack (transformers==4.46.3, tokenizers==0.20.3,
                     einops, addict, easydict, torchvision) in its own env
                     (conda env dsocr-remote, or .venv-remote)
  --prefix DIR       where to install Miniconda when no conda/mamba is found
                     (default: ~/miniconda3)
  --torch-index URL  use this PyTorch wheel index instead of the detected one
  --dev              install the test extra too (pip install -e '.[test]')
  --dry-run          print every command and system change, change nothing
  --yes, -y          do not ask for confirmation
  --help, -h         show this text

Environment: PYTHON=python3.X picks the interpreter for --venv.

Torch wheel index by GPU (nvidia-smi --query-gpu=compute_cap):
  none, or --cpu                      https://download.pytorch.org/whl/cpu
  sm_80 .. sm_10x (A100, H100, B200)  https://download.pytorch.org/whl/cu128
  sm_12x Blackwell, x86_64            https://download.pytorch.org/whl/cu128
  sm_12x Blackwell, aarch64 (GB10)    https://download.pytorch.org/whl/cu130 (driver >= 580)
  below sm_80                         https://download.pytorch.org/whl/cu126
EOF
}

say() { printf 'dsocr-install: %s\n' "$*"; }
warn() { printf 'dsocr-install: warning: %s\n' "$*" >&2; }
die() { printf 'dsocr-install: error: %s\n' "$*" >&2; exit 1; }

# change DESCRIPTION: announce a system change (made, or with --dry-run, planned).
change() {
  if ((DRY_RUN)); then printf 'change: [dry-run] %s\n' "$*"; else printf 'change: %s\n' "$*"; fi
}

# show_cmd ARGS...: print a command so it can be pasted into a shell.
show_cmd() {
  local out="+" arg
  for arg in "$@"; do
    if [[ $arg =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then out+=" $arg"; else out+=" '${arg//\'/\'\\\'\'}'"; fi
  done
  printf '%s\n' "$out"
}

# run ARGS...: print a command, then run it unless --dry-run.
run() {
  show_cmd "$@"
  ((DRY_RUN)) || "$@"
}

parse_args() {
  while (($#)); do
    case "$1" in
      --venv) USE_VENV=1 ;;
      --cpu) CPU_ONLY=1 ;;
      --dev) DEV=1 ;;
      --dry-run) DRY_RUN=1 ;;
      --yes | -y) ASSUME_YES=1 ;;
      --profile) (($# > 1)) || die "--profile needs a value"; PROFILE=$2; shift ;;
      --profile=*) PROFILE=${1#*=} ;;
      --prefix) (($# > 1)) || die "--prefix needs a value"; PREFIX=$2; shift ;;
      --prefix=*) PREFIX=${1#*=} ;;
      --torch-index) (($# > 1)) || die "--torch-index needs a value"; TORCH_INDEX=$2; shift ;;
      --torch-index=*) TORCH_INDEX=${1#*=} ;;
      --help | -h) usage; exit 0 ;;
      *) usage >&2; printf '\ndsocr-install: error: unknown option: %s\n' "$1" >&2; exit 2 ;;
    esac
    shift
  done
  case "$PROFILE" in
    native | remote) ;;
    *) die "--profile must be native or remote, not '$PROFILE'" ;;
  esac
  [[ $PREFIX == /* ]] || PREFIX="$PWD/$PREFIX"
  [[ -f $ROOT/pyproject.toml ]] || die "no pyproject.toml in $ROOT"
}

# ---------------------------------------------------------------- pyproject.toml

# toml_list KEY: the strings of a `KEY = [...]` list in pyproject.toml, one a line.
toml_list() {
  awk -v key="$1" '
    $0 ~ "^" key "[[:space:]]*=[[:space:]]*\\[" { on = 1 }
    on { print; if ($0 ~ /\][[:space:]]*(#.*)?$/) exit }
  ' "$ROOT/pyproject.toml" | grep -o '"[^"]*"' | tr -d '"'
}

req_name() {
  local name=${1%%[<>=!~ ;[]*}
  name=${name//_/-}
  printf '%s\n' "${name,,}"
}

# runtime_deps [SKIP...]: [project] dependencies, without the named packages.
runtime_deps() {
  local req skip keep
  while IFS= read -r req; do
    keep=1
    for skip in "$@"; do [[ $(req_name "$req") == "$skip" ]] && keep=0; done
    ((keep)) && printf '%s\n' "$req"
  done < <(toml_list dependencies)
}

test_deps() { toml_list test; }

# ---------------------------------------------------------------- probes of the target env

# satisfied REQ...: true when the env's python has every requirement installed.
satisfied() {
  [[ -x $ENV_PY ]] || return 1
  "$ENV_PY" - "$@" <<'PY' >/dev/null 2>&1
import sys
from importlib.metadata import PackageNotFoundError, version
try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement
for text in sys.argv[1:]:
    req = Requirement(text)
    if req.marker is not None and not req.marker.evaluate():
        continue
    try:
        installed = version(req.name)
    except PackageNotFoundError:
        sys.exit(1)
    if not req.specifier.contains(installed, prereleases=True):
        sys.exit(1)
PY
}

# The CUDA version a torch index serves ("cpu", "12.8", ...), or "any" for a custom index.
index_flavour() {
  local tag=${1%/}
  tag=${tag##*/}
  case "$tag" in
    cpu) printf 'cpu\n' ;;
    cu[0-9][0-9][0-9]) printf '%s.%s\n' "${tag:2:2}" "${tag:4:1}" ;;
    *) printf 'any\n' ;;
  esac
}

installed_torch_flavour() {
  [[ -x $ENV_PY ]] || return 1
  "$ENV_PY" -c 'import torch; print(torch.version.cuda or "cpu")' 2>/dev/null
}

dsocr_installed_here() {
  [[ -x $ENV_PY ]] || return 1
  "$ENV_PY" - "$ROOT/src" <<'PY' >/dev/null 2>&1
import importlib.util, os, sys
spec = importlib.util.find_spec("dsocr_cli")
sys.exit(0 if spec and spec.origin and os.path.realpath(spec.origin).startswith(os.path.realpath(sys.argv[1])) else 1)
PY
}

# ---------------------------------------------------------------- platform and GPU

# Sets TORCH_INDEX (unless given) and GPU_SUMMARY from nvidia-smi.
choose_torch_index() {
  local arch caps cap major minor sm driver driver_major name
  arch=$(uname -m)
  case "$arch" in
    x86_64 | aarch64) ;;
    *) die "unsupported machine $arch (x86_64 or aarch64 only)" ;;
  esac
  [[ -n $TORCH_INDEX ]] && { GPU_SUMMARY="not probed (--torch-index given)"; return; }
  if ((CPU_ONLY)); then
    GPU_SUMMARY="ignored (--cpu)"; TORCH_INDEX="$TORCH_BASE/cpu"; return
  fi
  if ! command -v nvidia-smi >/dev/null 2>&1; then
    GPU_SUMMARY="none (no nvidia-smi)"; TORCH_INDEX="$TORCH_BASE/cpu"; return
  fi
  if ! caps=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null) || [[ -z ${caps//[[:space:]]/} ]]; then
    warn "nvidia-smi gave no compute capability (driver too old, or no GPU visible); using CUDA 12.8 wheels"
    GPU_SUMMARY="unknown"; TORCH_INDEX="$TORCH_BASE/cu128"; return
  fi
  cap=$(printf '%s\n' "$caps" | tr -d ' ' | sort -t. -k1,1n -k2,2n | head -n1)   # the oldest GPU decides
  major=${cap%%.*} minor=${cap#*.}
  sm=$((major * 10 + minor))
  driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n1 | tr -d ' ') || driver=""
  driver_major=${driver%%.*}
  [[ $driver_major =~ ^[0-9]+$ ]] || driver_major=0
  name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n1) || name="GPU"
  GPU_SUMMARY="$name, sm_$sm, driver ${driver:-unknown}, $arch"
  if ((sm >= 120)) && [[ $arch == aarch64 ]]; then
    if ((driver_major >= 580)); then
      TORCH_INDEX="$TORCH_BASE/cu130"
    else
      warn "driver ${driver:-unknown} is older than R580 (CUDA 13); using CUDA 12.8 wheels"
      TORCH_INDEX="$TORCH_BASE/cu128"
    fi
  elif ((sm >= 80)); then
    TORCH_INDEX="$TORCH_BASE/cu128"
  else
    warn "sm_$sm predates bf16 (sm_80); DeepSeek-OCR runs in bf16, expect it slow or failing on this GPU"
    TORCH_INDEX="$TORCH_BASE/cu126"
  fi
  if [[ $TORCH_INDEX == */cu128 ]] && ((driver_major > 0 && driver_major < 570)); then
    warn "driver $driver is older than R570 (CUDA 12.8); torch may refuse the GPU, update the driver if so"
  fi
}

# ---------------------------------------------------------------- base environment

check_python() {
  command -v "$PYTHON_BIN" >/dev/null 2>&1 || die "$PYTHON_BIN not found; set PYTHON=/path/to/python3.12"
  "$PYTHON_BIN" -c 'import sys; sys.exit(not ((3, 10) <= sys.version_info[:2] < (3, 14)))' \
    || die "$PYTHON_BIN is $("$PYTHON_BIN" -V 2>&1); dsocr needs Python 3.10 to 3.13 (set PYTHON=...)"
  "$PYTHON_BIN" -c 'import venv, ensurepip' 2>/dev/null \
    || die "$PYTHON_BIN cannot create venvs; install your distribution's python3-venv package"
}

ensure_venv() {
  check_python
  ENV_DIR="$ROOT/.venv"
  [[ $PROFILE == remote ]] && ENV_DIR="$ROOT/.venv-remote"
  ENV_PY="$ENV_DIR/bin/python"
  if [[ -x $ENV_PY ]]; then
    say "ok: venv $ENV_DIR exists"
    return
  fi
  [[ -e $ENV_DIR ]] && die "$ENV_DIR exists but has no bin/python; remove it first"
  change "create Python venv $ENV_DIR ($("$PYTHON_BIN" -V 2>&1))"
  run "$PYTHON_BIN" -m venv "$ENV_DIR"
}

find_conda() {
  local candidate
  for candidate in "${CONDA_EXE:-}" "$(command -v conda 2>/dev/null || true)" \
    "$(command -v mamba 2>/dev/null || true)" "$PREFIX/bin/conda"; do
    if [[ -n $candidate && -x $candidate ]]; then CONDA_BIN=$candidate; return 0; fi
  done
  return 1
}

install_miniconda() {
  local url
  url="$MINICONDA_BASE/Miniconda3-latest-Linux-$(uname -m).sh"
  [[ -e $PREFIX ]] && die "$PREFIX exists but holds no conda; pick another --prefix or remove it"
  say "no conda or mamba found; installing Miniconda into $PREFIX (no 'conda init': ~/.bashrc is left alone)"
  INSTALLER="${TMPDIR:-/tmp}/dsocr-miniconda-$$.sh"
  change "download $url to $INSTALLER (deleted afterwards)"
  if command -v curl >/dev/null 2>&1 || ((DRY_RUN)); then
    run curl -fsSL --retry 3 -o "$INSTALLER" "$url"
  elif command -v wget >/dev/null 2>&1; then
    run wget -q -O "$INSTALLER" "$url"
  else
    die "neither curl nor wget found to download $url"
  fi
  change "install Miniconda into $PREFIX"
  run bash "$INSTALLER" -b -p "$PREFIX"
  run rm -f "$INSTALLER"
  CONDA_BIN="$PREFIX/bin/conda"
}

# conda_env_dir NAME: the env's folder when it exists.
conda_env_dir() {
  [[ -n $CONDA_BIN && -x $CONDA_BIN ]] || return 1
  "$CONDA_BIN" env list 2>/dev/null | awk -v n="$1" '$1 == n { print $NF; found = 1 } END { exit !found }'
}

ensure_conda_env() {
  local base
  if find_conda; then say "ok: using $CONDA_BIN"; else install_miniconda; fi
  ENV_NAME=dsocr
  [[ $PROFILE == remote ]] && ENV_NAME=dsocr-remote
  if ENV_DIR=$(conda_env_dir "$ENV_NAME"); then
    say "ok: conda env $ENV_NAME exists at $ENV_DIR"
  else
    base=$(conda_env_dir base) || base=$(dirname "$(dirname "$CONDA_BIN")")
    ENV_DIR="$base/envs/$ENV_NAME"
    change "create conda env $ENV_NAME at $ENV_DIR from environment.yml (Python 3.12 and dsocr's runtime deps)"
    run "$CONDA_BIN" env create -n "$ENV_NAME" -f "$ROOT/environment.yml"
    if ! ((DRY_RUN)); then ENV_DIR=$(conda_env_dir "$ENV_NAME") || die "conda env $ENV_NAME not found after creating it"; fi
  fi
  ENV_PY="$ENV_DIR/bin/python"
}

# ---------------------------------------------------------------- packages

pip_install() { run "$ENV_PY" -m pip install "$@"; }

ensure_pip() {
  if satisfied "pip>=23"; then say "ok: pip is recent enough"; return; fi
  change "upgrade pip in $ENV_DIR"
  pip_install --upgrade "pip>=23"
}

ensure_torch() {
  local want have packages=(torch) reqs=("torch>=2.6")
  [[ $PROFILE == remote ]] && { packages+=(torchvision); reqs+=(torchvision); }
  want=$(index_flavour "$TORCH_INDEX")
  have=$(installed_torch_flavour) || have=""
  if [[ -n $have && ($want == any || $want == "$have") ]] && satisfied "${reqs[@]}"; then
    say "ok: ${packages[*]} (${have}) already installed"
    return
  fi
  check_torch_index
  if [[ -n $have && $want != any && $want != "$have" ]]; then
    change "remove ${packages[*]} built for '$have' from $ENV_DIR (this machine wants '$want')"
    run "$ENV_PY" -m pip uninstall -y "${packages[@]}"
  fi
  change "pip install ${packages[*]} into $ENV_DIR from $TORCH_INDEX"
  pip_install "${packages[@]}" --index-url "$TORCH_INDEX"
}

# torch_index_problem: why the torch index cannot be reached, or nothing when it can. It takes
# seconds, where pip would retry for minutes before falling back to another index.
torch_index_problem() {
  "$ENV_PY" - "$TORCH_INDEX" <<'PY' 2>&1
import os
import ssl
import sys
import urllib.error
import urllib.request

url = sys.argv[1]
cafile = os.environ.get("PIP_CERT") or os.environ.get("REQUESTS_CA_BUNDLE")  # as pip would verify
if url.startswith(("http://", "https://")):
    try:
        context = ssl.create_default_context(cafile=cafile) if cafile else None
        urllib.request.urlopen(url.rstrip("/") + "/torch/", timeout=8, context=context).close()
    except urllib.error.HTTPError:
        pass  # the server answered: pip judges the index itself
    except Exception as exc:  # DNS, refused, timed out, TLS
        print(getattr(exc, "reason", None) or exc)
PY
}

# pip_indexes: the indexes this environment's pip is configured with, one a line.
pip_indexes() {
  "$ENV_PY" -m pip config list 2>/dev/null | sed -n "s/^[^=]*index-url='\(.*\)'\$/\1/p" | tr ' ' '\n' \
    | awk 'NF && !seen[$0]++'
}

check_torch_index() {
  local why suggestion
  ((DRY_RUN)) && return 0
  why=$(torch_index_problem) || why="the check itself failed"
  [[ -z $why ]] && return 0
  suggestion=$(pip_indexes | head -n1) || true
  suggestion=${suggestion:-https://pypi.org/simple}
  die "cannot reach the PyTorch wheel index $TORCH_INDEX ($why); nothing was installed from it." \
    "Rerun with --torch-index URL naming an index this machine reaches, for example --torch-index $suggestion"
}

ensure_dsocr_native() {
  local target="$ROOT" reqs
  mapfile -t reqs < <(runtime_deps)
  if ((DEV)); then target="${ROOT}[test]"; mapfile -t -O "${#reqs[@]}" reqs < <(test_deps); fi
  if dsocr_installed_here && satisfied "${reqs[@]}"; then
    say "ok: dsocr installed (editable) from $ROOT with its dependencies"
    return
  fi
  change "pip install -e $target into $ENV_DIR (dsocr and its dependencies)"
  pip_install -e "$target"
}

ensure_dsocr_remote() {
  local reqs
  mapfile -t reqs < <(runtime_deps "${REMOTE_REPLACES[@]}")
  reqs+=("${REMOTE_PINS[@]}")
  ((DEV)) && mapfile -t -O "${#reqs[@]}" reqs < <(test_deps)
  if dsocr_installed_here && satisfied "${reqs[@]}"; then
    say "ok: dsocr installed (editable) with the remote-code stack"
    return
  fi
  change "pip install -e $ROOT --no-deps into $ENV_DIR (dsocr itself; its transformers>=5 pin is replaced)"
  pip_install --no-deps -e "$ROOT"
  change "pip install the remote-code stack into $ENV_DIR: ${REMOTE_PINS[*]}"
  pip_install "${reqs[@]}"
}

# ---------------------------------------------------------------- check

# verify: prove the install runs and say what `dsocr doctor` found. A machine without a usable
# GPU is a finding, not a failed install: the native engine runs on the CPU (the selftest proves it).
verify() {
  local dsocr_bin="$ENV_DIR/bin/dsocr" report rc=0 verdict
  if [[ $PROFILE == remote ]]; then
    # selftest builds a native DeepSeek-OCR-2 model, which transformers 4.46.3 does not have.
    run "$ENV_PY" -c 'import transformers, tokenizers, einops, addict, easydict, torchvision
assert transformers.__version__ == "4.46.3", transformers.__version__
print("remote-code stack: transformers", transformers.__version__, "tokenizers", tokenizers.__version__)'
    run "$dsocr_bin" version
  fi
  show_cmd "$dsocr_bin" doctor
  if ((DRY_RUN)); then
    if [[ $PROFILE == native ]]; then
      say "(dry-run) when doctor finds no usable GPU, '$dsocr_bin selftest' proves the CPU path"
    fi
    return
  fi
  report=$("$dsocr_bin" doctor) || rc=$?
  printf '%s\n' "$report"
  verdict=$(sed -n 's/^verdict *//p' <<<"$report")
  verdict=${verdict:-no verdict}
  if ((rc == 0)); then
    say "doctor: $verdict"
  elif ((rc == 4)) && [[ $PROFILE == native ]]; then
    run "$dsocr_bin" selftest || die "the install does not run: dsocr selftest failed (see above); doctor: $verdict"
    say "doctor: $verdict; the install works, on the CPU"
  elif ((rc == 4)); then
    warn "doctor: $verdict"
    say "the remote-code stack is installed; --engine infer needs what doctor asks for above"
  else
    die "dsocr doctor failed (exit $rc); rerun $dsocr_bin doctor --verbose"
  fi
}

# ---------------------------------------------------------------- main

confirm() {
  ((ASSUME_YES || DRY_RUN)) && return
  [[ -t 0 ]] || die "no terminal to confirm on; rerun with --yes (or --dry-run to see the plan)"
  local answer
  read -r -p "Proceed? [y/N] " answer
  [[ $answer == [yY]* ]] || die "cancelled"
}

summary() {
  say "repository : $ROOT"
  say "profile    : $PROFILE$( ((DEV)) && printf ' (+test extra)')"
  if ((USE_VENV)); then
    say "env kind   : venv ($PYTHON_BIN)"
  else
    say "env kind   : conda (Miniconda goes to $PREFIX if no conda/mamba is found)"
  fi
  say "GPU        : $GPU_SUMMARY"
  say "torch index: $TORCH_INDEX"
  ((DRY_RUN)) && say "dry run: nothing below is executed"
  return 0
}

main() {
  parse_args "$@"
  choose_torch_index
  summary
  confirm
  if ((USE_VENV)); then ensure_venv; else ensure_conda_env; fi
  ensure_pip
  ensure_torch
  if [[ $PROFILE == native ]]; then ensure_dsocr_native; else ensure_dsocr_remote; fi
  verify
  if ((DRY_RUN)); then
    say "dry run done: nothing was changed"
  elif ((USE_VENV)); then
    say "done. Run: $ENV_DIR/bin/dsocr --help   (or: source $ENV_DIR/bin/activate)"
  else
    say "done. Run: $ENV_DIR/bin/dsocr --help   (or: conda activate $ENV_NAME)"
  fi
}

main "$@"
