#!/usr/bin/env bash
# The one airlock installer.
#
#   ./install.sh                 online dev set-up: .venv from the hash-locked wheels/*.lock files
#                                (torch, vLLM, airlock's dependencies, test packages), airlock itself
#                                (editable), the reference model
#   ./install.sh --force         redo the pip steps even when nothing changed
#   ./install.sh --update-lock   regenerate wheels/requirements-{cpu,cuda,test}.lock (pip's resolver,
#                                for the targets' platform; pins of the old locks are kept where they
#                                still fit), then install from them
#   ./install.sh --offline DIR   install from an unpacked bundle (not yet available)
#
# A second run with unchanged inputs takes seconds: a stamp in .venv records a hash of
# pyproject.toml, this script and the lock files, and the pip steps are skipped while it matches.
set -euo pipefail

LOCK_DIR="wheels"
TEST_LOCK="$LOCK_DIR/requirements-test.lock"
VENV=".venv"
STAMP="$VENV/.airlock-install-stamp"
REFERENCE_MODEL="offline_models/airlock-tiny"

say() { printf 'airlock install: %s\n' "$*"; }
die() { printf 'airlock install: error: %s\n' "$*" >&2; exit 1; }

cd "$(dirname "$0")"

usage() {
    sed -n '2,15p' install.sh | sed 's/^# \{0,1\}//'
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

# --- target: the CUDA lock where an NVIDIA GPU answers, the CPU lock elsewhere ----------------------
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    target="cuda"
else
    target="cpu"
fi
TARGET_LOCK="$LOCK_DIR/requirements-$target.lock"

if [ "$update_lock" -eq 1 ]; then
    say "regenerating $LOCK_DIR/requirements-{cpu,test,cuda}.lock (resolving for each target's platform)"
    # The lock writer runs from the checkout; packaging is its one dependency beyond the standard library.
    "$py" -c 'import packaging' >/dev/null 2>&1 || pip_install packaging
    PYTHONPATH=src "$py" -m airlock.bundle.locks --wheels-dir "$LOCK_DIR" \
        || die "regenerating the locks failed (see above); to resolve every release afresh run:" \
               "PYTHONPATH=src $py -m airlock.bundle.locks --upgrade"
fi

for lock in "$TARGET_LOCK" "$TEST_LOCK"; do
    [ -f "$lock" ] || die "$lock is missing; run ./install.sh --update-lock to write it"
done

input_hash() {
    { echo "target=$target"; cat pyproject.toml install.sh "$TARGET_LOCK" "$TEST_LOCK"; } \
        | "$py" -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())'
}

# --- pip steps, skipped while the stamp matches ------------------------------------------------
if [ "$force" -eq 0 ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(input_hash)" ]; then
    say "python packages up to date ($target); --force reinstalls"
else
    rm -f "$STAMP"
    # Exactly the locked files: every one hash-checked, nothing resolved beyond the locks. The CPU
    # lock holds the CPU torch build (pip finds it through this host's find-links or index
    # configuration) and leaves out torchvision/torchaudio/torchcodec, which break transformers.
    say "installing $TARGET_LOCK and $TEST_LOCK (hashes required, no dependency resolution)"
    pip_install --require-hashes --no-deps -r "$TARGET_LOCK" -r "$TEST_LOCK" \
        || die "installing from the locks failed (see above); a hash mismatch means a file changed" \
               "on its index; if a pin in pyproject.toml changed, run ./install.sh --update-lock"
    if [ "$target" = "cpu" ]; then
        "$py" -W ignore -c 'import sys, torch; sys.exit(torch.version.cuda is not None)' \
            || die "the installed torch is a CUDA build; this host has no NVIDIA GPU"
    fi

    say "installing airlock (editable; its dependencies come from the locks)"
    pip_install --no-deps --no-build-isolation -e . \
        || die "installing airlock failed (see above)"

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
