"""pip, run as a module of this interpreter, its failures turned into airlock errors.

The host's pip configuration (index mirrors, find-links folders, a certificate bundle) applies:
the CPU torch build, for one, is found through it. Whatever source serves a file, the lock's
hashes decide whether it is taken.
"""

from __future__ import annotations

import os
import subprocess
import sys

from airlock.errors import IntegrityFailure, InvalidInput

PIP_TIMEOUT_S = 3 * 3600  # the CUDA wheels are several GB on a slow link
HASH_MISMATCH = "DO NOT MATCH THE HASHES"
# pip repeats this for every project a configured local index lacks; it says nothing of the build.
NOISE = "is ignored: it is neither a file nor a directory"


def pip_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    return env


def sealed_pip_env() -> dict[str, str]:
    """No pip configuration of this host (an index, a find-links folder, a constraint) applies: what
    pip sees is exactly the bundle's wheels. Standard library only (the offline installer uses it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INPUT="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


def run_pip(args: list[str], *, what: str, extra_env: dict[str, str] | None = None,
            timeout_s: float = PIP_TIMEOUT_S, sealed: bool = False) -> str:
    """pip's stdout; on failure an error naming `what` with the end of pip's own explanation."""
    cmd = [sys.executable, "-m", "pip", *args]
    env = sealed_pip_env() if sealed else pip_env()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                              env={**env, **(extra_env or {})}, check=False)
    except subprocess.TimeoutExpired:
        raise InvalidInput(f"{what}: pip did not finish within {timeout_s} s") from None
    if done.returncode == 0:
        return done.stdout
    said = [line for line in (done.stderr + done.stdout).splitlines() if line.strip() and NOISE not in line]
    tail = "\n".join(said[-25:])
    error = IntegrityFailure if HASH_MISMATCH in tail else InvalidInput
    raise error(f"{what}: pip failed (exit {done.returncode}):\n{tail}")
