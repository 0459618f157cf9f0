"""Running the provisioning playbooks as an operator would: from the playbooks of an unpacked
bundle, against this machine as the only host (`connection: local`), optionally inside a network
namespace that has loopback only, and reading what Ansible says it changed."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from airlock.bundle.check import unpack, verify_bundle

VENV_BIN = Path(sys.executable).parent
CONTAINERS_CONF = os.environ.get("CONTAINERS_CONF", "")
GROUPS = ("gateways", "engines", "workers", "stores")


def unpacked_playbooks(bundle: Path, fingerprint: str, dest: Path) -> Path:
    """The bundle verified and unpacked the way an operator's control node has it; its playbooks folder.
    The rest of the unpacked tree is removed: the play reads the bundle itself (airlock_bundle_dir),
    and two or three of these exist at once while the suite's disk is finite."""
    verified = verify_bundle(bundle, now=datetime.now(UTC), fingerprint=fingerprint)
    unpack(bundle, verified, dest)
    for path in dest.iterdir():
        if path.name != "playbooks":
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    return dest / "playbooks"


class NetNS:
    """A named network namespace with loopback only: nothing inside can reach another host."""

    def __init__(self) -> None:
        self.name = f"airlock-prov-{uuid.uuid4().hex[:8]}"

    def prefix(self) -> list[str]:
        # nsenter enters the network namespace only; `ip netns exec` also remounts /sys, which hides
        # the cgroup mounts from podman (runc: "no cgroup mount found in mountinfo").
        return ["nsenter", f"--net=/run/netns/{self.name}"]

    def run(self, argv: list[str], *, timeout: float = 600, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        return run_in(self.prefix(), argv, where=self.name, timeout=timeout, check=check, **kwargs)


def run_in(prefix: list[str], argv: list[str], *, where: str, timeout: float, check: bool,
           **kwargs) -> subprocess.CompletedProcess:
    """argv run through `prefix` (into a namespace, onto a host); with `check`, a failure names
    the command, `where`, and what it printed."""
    done = subprocess.run(prefix + argv, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {done.returncode} in {where}:\n"
                             f"{done.stdout[-6000:]}\n{done.stderr[-4000:]}")
    return done


@contextmanager
def network_namespace() -> Iterator[NetNS]:
    ns = NetNS()
    subprocess.run(["ip", "netns", "add", ns.name], check=True)
    try:
        subprocess.run(["ip", "-n", ns.name, "link", "set", "lo", "up"], check=True)
        yield ns
    finally:
        subprocess.run(["ip", "netns", "delete", ns.name], check=False)


def appliance_vars(*, bundle: Path, fingerprint: str, mode: str, gateway_port: int, store_port: int) -> dict:
    """What every test inventory sets: the bundle (already on each host), the mode, the ports, the
    limits of a 2-core test machine, and a clock nobody synchronises here."""
    return {
        "airlock_bundle_dir": str(bundle), "airlock_root_fingerprint": fingerprint, "airlock_bundle_copy": False,
        "airlock_mode": mode, "airlock_host_time_sync": "warn", "airlock_gateway_port": gateway_port,
        "airlock_store_port": store_port,
        "airlock_limits": {"gateway": {"cpus": "1", "memory": "1g"}, "worker": {"cpus": "2", "memory": "6g"},
                           "engine": {"cpus": "2", "memory": "6g"}, "store": {"cpus": "1", "memory": "1g"}},
    }


def write_inventory(path: Path, common: dict, groups: dict[str, list[str]], hosts: dict[str, dict] | None = None) -> Path:
    """An inventory of `groups` (group: its hosts), `common` for all and `hosts` each host's own. JSON is YAML."""
    children = {group: {"hosts": dict.fromkeys(members)} for group, members in groups.items()}
    path.write_text(json.dumps({"all": {"vars": common, "hosts": hosts or {}, "children": children}}, indent=1))
    return path


def local_inventory(path: Path, *, bundle: Path, fingerprint: str, root: Path, mode: str, gateway_port: int,
                    store_port: int, groups: dict[str, list[str]] | None = None, **more) -> Path:
    """This machine as the host `appliance`, in all four groups unless `groups` names the hosts of
    each, through the local connection; every path under `root`."""
    common = {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable, "ansible_become": False,
        **appliance_vars(bundle=bundle, fingerprint=fingerprint, mode=mode, gateway_port=gateway_port,
                         store_port=store_port),
        "airlock_prefix": str(root / "opt"), "airlock_home": str(root / "home"),
        "airlock_config_dir": str(root / "etc"), "airlock_store_data": str(root / "store"),
        "airlock_systemd_unit_dir": str(root / "units"), "airlock_host_firewall": "none",
        "airlock_podman_env": {"CONTAINERS_CONF": CONTAINERS_CONF} if CONTAINERS_CONF else {},
        **more,
    }
    return write_inventory(path, common, groups or {group: ["appliance"] for group in GROUPS})


def playbook_argv(playbooks: Path, inventory: Path, *args: str, playbook: str = "site.yml") -> list[str]:
    return [str(VENV_BIN / "ansible-playbook"), "-i", str(inventory), str(playbooks / playbook), *args]


def playbook_env(playbooks: Path) -> dict[str, str]:
    """The release's venv is made from the first Python 3.11 on the host's PATH, and the service user
    runs it (processes mode, `airlock backup`): so the system's comes first, as on a real host, not
    one under root's home (0700), where pyenv keeps it."""
    assert Path("/usr/bin/python3.11").is_file(), "the provisioned release runs on the system's Python 3.11"
    return dict(os.environ, ANSIBLE_CONFIG=str(playbooks / "ansible.cfg"), ANSIBLE_FORCE_COLOR="0",
                ANSIBLE_NOCOLOR="1", PATH=f"/usr/bin:{VENV_BIN}:{os.environ.get('PATH', '')}")


def recap(output: str, host: str = "appliance") -> dict[str, int]:
    """The PLAY RECAP line of a host: ok, changed, unreachable, failed, skipped, rescued, ignored."""
    line = re.search(rf"^{re.escape(host)}\s+:\s+(.*)$", output, re.MULTILINE)
    assert line, f"no PLAY RECAP for the host in:\n{output[-3000:]}"
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line.group(1))}


CHAT_SCRIPT = """
import json, ssl, sys
import httpx
from openai import OpenAI
args = json.loads(sys.argv[1])
verify = ssl.create_default_context(cafile=args["cert"])
client = OpenAI(base_url=args["url"], api_key=args["key"], max_retries=0,
                http_client=httpx.Client(verify=verify, trust_env=False, timeout=120))
reply = client.chat.completions.create(model=args["model"], messages=args["messages"], temperature=0, max_tokens=40)
print(json.dumps({"content": reply.choices[0].message.content}))
"""


def chat(runner, *, url: str, cert: Path, key: str, model: str, messages: list[dict]) -> str:
    """The official openai client, trusting only the gateway's certificate, run where `runner` runs."""
    args = json.dumps({"url": url, "cert": str(cert), "key": key, "model": model, "messages": messages})
    done = runner([sys.executable, "-c", CHAT_SCRIPT, args], timeout=180)
    return json.loads(done.stdout.strip().splitlines()[-1])["content"]
