"""Provisioning in containers mode, as the operator does it: the playbook of an unpacked bundle,
run against this machine inside a network namespace with loopback only, installs the release,
loads the images and runs the store, the engine, the worker and the gateway as podman containers.
The quickstart trains and serves there, the official openai client gets the trained answer over
TLS (trusting only the certificate the play generated and whose fingerprint it printed), a second
run changes nothing, a container killed with SIGKILL comes back, and with the store stopped the
gateway keeps serving while a training run fails naming the store, until the store returns."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from bundle_builder import build_models_bundle
from e2e_support import QA, REPO_ROOT
from provision_support import (chat, local_inventory, network_namespace, playbook_argv, playbook_env, recap,
                               unpacked_playbooks)
from vllm_fixtures import free_port

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

ALIAS = "quickstart-assistant"
SITE_MODEL = "site-tiny"
# The quickstart on the models bundle's model, where the worker container reads it (its home).
SITE_QUICKSTART = "/var/lib/airlock/site-quickstart.yaml"
SERVICES = ("store", "engine", "worker", "gateway")


def podman(ns, *args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
    return ns.run(["podman", *args], check=check, timeout=timeout)


@pytest.fixture(scope="module")
def provisioned(cpu_bundle, provision_root, tmp_path_factory):
    bundle, fingerprint = cpu_bundle
    base = tmp_path_factory.mktemp("provision-containers")
    playbooks = unpacked_playbooks(bundle, fingerprint, base / "control")
    root = provision_root / "containers"
    # The engine serves a model the site brought in a models bundle, which the play installs.
    models_bundle = build_models_bundle(bundle.parent / "ceremony", base / "models-bundle", SITE_MODEL)
    inventory = local_inventory(base / "inventory.yml", bundle=bundle, fingerprint=fingerprint, root=root,
                                mode="containers", gateway_port=free_port(), store_port=free_port(),
                                airlock_prefix=str(provision_root / "opt"), airlock_models=[str(models_bundle)],
                                airlock_services_settings={"serve_base_model": SITE_MODEL})
    with network_namespace() as ns:
        env = playbook_env(playbooks)
        started = time.monotonic()
        first = ns.run(playbook_argv(playbooks, inventory), env=env, timeout=2400, check=False)
        first_s = time.monotonic() - started
        try:
            assert first.returncode == 0, first.stdout[-8000:] + first.stderr[-3000:]
            yield {"ns": ns, "first": first, "first_s": first_s, "playbooks": playbooks, "inventory": inventory,
                   "env": env, "root": root, "prefix": provision_root / "opt",
                   "port": json.loads(inventory.read_text())["all"]["vars"]["airlock_gateway_port"]}
        finally:
            podman(ns, "rm", "--force", "--time", "10", *(f"airlock-{s}" for s in SERVICES), check=False)
            podman(ns, "network", "rm", "--force", "airlock", check=False)
            # The unpacked bundle, and the releases with their venvs (last in its group: nothing
            # after this module uses the prefix): the suite's disk is finite.
            shutil.rmtree(base, ignore_errors=True)
            shutil.rmtree(provision_root / "opt", ignore_errors=True)


def _url(provisioned) -> str:
    return f"https://127.0.0.1:{provisioned['port']}/v1"


def _cert(provisioned) -> Path:
    return provisioned["root"] / "etc" / "tls" / "gateway.crt"


def _ask(provisioned, key: str) -> str:
    return chat(provisioned["ns"].run, url=_url(provisioned), cert=_cert(provisioned), key=key, model=ALIAS,
                messages=QA[0][:-1])


@pytest.fixture(scope="module")
def trained(provisioned) -> str:
    """The quickstart trained, gated and served by the provisioned containers; an inference key for it."""
    ns = provisioned["ns"]
    spec = yaml.safe_load((REPO_ROOT / "examples" / "quickstart.yaml").read_text())
    spec["base_model"], spec["dataset"] = SITE_MODEL, "/examples/datasets/quickstart.jsonl"
    spec["stages"][1]["with"]["eval_set"] = "/examples/datasets/quickstart-eval.jsonl"
    written = provisioned["root"] / "home" / Path(SITE_QUICKSTART).name
    written.write_text(yaml.safe_dump(spec))
    written.chmod(0o600)  # the home's rules: the service user's alone (the play checks them on every run)
    os.chown(written, 10001, 10001)
    podman(ns, "exec", "airlock-worker", "airlock", "gate", "policy", "set", ALIAS, "--approvals", "0")
    run = podman(ns, "exec", "airlock-worker", "airlock", "workflow", "run", SITE_QUICKSTART, "--wait")
    assert "succeeded" in run.stdout + run.stderr, run.stdout + run.stderr
    out = podman(ns, "exec", "airlock-gateway", "airlock", "apikey", "create", "--name", "app", "--models", ALIAS).stdout
    return re.search(r"ak-[A-Za-z0-9_-]+", out).group(0)


def test_the_play_runs_every_service_as_a_locked_down_container_and_prints_the_fingerprint(provisioned) -> None:
    ns, out = provisioned["ns"], provisioned["first"].stdout
    for service in SERVICES:
        state = json.loads(podman(ns, "inspect", f"airlock-{service}").stdout)[0]
        assert state["State"]["Running"], service
        host = state["HostConfig"]
        assert host["ReadonlyRootfs"] and host["RestartPolicy"]["Name"] == "always", service
        assert "no-new-privileges" in host["SecurityOpt"], service
        assert state["Config"]["User"] == "10001:10001", service
    assert json.loads(podman(ns, "inspect", "airlock-engine").stdout)[0]["HostConfig"]["NetworkMode"] == "none"
    printed = re.search(r"certificate SHA-256 fingerprint ([0-9A-F:]{95})", out)
    assert printed, out[-4000:]
    real = subprocess.run(["openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in", str(_cert(provisioned))],
                          capture_output=True, text=True, check=True).stdout
    assert printed.group(1) in real
    # the store's credentials: generated once, the service user's only, never in the play's output
    credentials = provisioned["root"] / "etc" / "store.credentials"
    assert credentials.stat().st_mode & 0o777 == 0o600
    secret = credentials.read_text().splitlines()[1]
    assert secret not in out and secret not in provisioned["first"].stderr


def test_the_play_installs_the_models_bundle_and_the_engine_serves_its_model(provisioned) -> None:
    ns, installed = provisioned["ns"], provisioned["prefix"] / "models" / SITE_MODEL
    assert (installed / "config.json").is_file() and installed.stat().st_uid == 0
    listed = {m["id"]: m for m in json.loads(podman(ns, "exec", "airlock-worker", "airlock", "models", "list",
                                                       "--json").stdout) if m.get("kind") == "base-model"}
    assert set(listed) == {"airlock-tiny", SITE_MODEL}, listed
    assert listed[SITE_MODEL]["served_by"] == "engine" and not listed["airlock-tiny"]["served_by"], listed
    # the install is audited in the appliance's log, and the home is still the service user's
    assert (provisioned["root"] / "home").stat().st_uid == 10001
    audit = podman(ns, "exec", "airlock-gateway", "airlock", "audit", "list", "--action", "models.install",
                   "--jsonl").stdout
    [row] = [json.loads(line) for line in audit.splitlines()]
    assert row["subject"] == SITE_MODEL, row
    engine = podman(ns, "exec", "airlock-engine", "cat", "/proc/1/cmdline").stdout.replace("\0", " ")
    assert f"/shared-models/{SITE_MODEL}" in engine, engine


def test_the_quickstart_is_served_over_tls_to_the_openai_client(provisioned, trained) -> None:
    assert _ask(provisioned, trained).strip() == QA[0][-1]["content"]
    # plain HTTP to the TLS port is no way in
    plain = provisioned["ns"].run(["curl", "-sS", "--noproxy", "*", "-o", "/dev/null", "-w", "%{http_code}",
                                   f"http://127.0.0.1:{provisioned['port']}/healthz"], check=False)
    assert plain.stdout.strip() in {"000", "400"} or plain.returncode != 0


def test_a_second_run_changes_nothing(provisioned) -> None:
    started = time.monotonic()
    second = provisioned["ns"].run(playbook_argv(provisioned["playbooks"], provisioned["inventory"]),
                                   env=provisioned["env"], timeout=1200, check=False)
    provisioned["second_s"] = time.monotonic() - started
    assert second.returncode == 0, second.stdout[-6000:]
    assert recap(second.stdout)["changed"] == 0, _changed_tasks(second.stdout)
    assert recap(second.stdout)["failed"] == 0


def _changed_tasks(output: str) -> list[str]:
    """The names of the tasks Ansible reported as changed (or, in check mode, would change)."""
    names, task = [], None
    for line in output.splitlines():
        if line.startswith("TASK [") or line.startswith("RUNNING HANDLER ["):
            task = line.split("[", 1)[1].rsplit("]", 1)[0]
        elif line.startswith("changed:") and task:
            names.append(task)
    return names


def test_check_mode_with_diff_shows_a_change_before_it_is_made(provisioned) -> None:
    settings = provisioned["root"] / "etc" / "airlock.env"
    before = settings.read_bytes()
    # The services read the release's models, then the models bundles' (PREFIX/models, mounted read-only).
    assert b"\nAIRLOCK_MODELS_PATH=/models:/shared-models\n" in before
    extra = json.dumps({"airlock_services_settings": {"default_rpm": 600},
                        "airlock_limits": {"gateway": {"cpus": "1", "memory": "2g"}, "worker": {"cpus": "2", "memory": "6g"},
                                           "engine": {"cpus": "2", "memory": "6g"}, "store": {"cpus": "1", "memory": "1g"}}})
    checked = provisioned["ns"].run(playbook_argv(provisioned["playbooks"], provisioned["inventory"], "--check", "--diff",
                                                  "-e", extra), env=provisioned["env"], timeout=1200, check=False)
    assert checked.returncode == 0, checked.stdout[-6000:]
    changed = _changed_tasks(checked.stdout)
    # the settings file's change is reported, its diff is not shown (no_log: the store's file holds its keys)
    assert "airlock_services : Write the services' settings" in changed, changed
    assert "airlock_services : Run the service's container" in changed, changed
    assert "memory" in checked.stdout and "2g" in checked.stdout.lower()
    secret = (provisioned["root"] / "etc" / "store.credentials").read_text().splitlines()[1]
    assert secret not in checked.stdout
    # shown, not made
    assert settings.read_bytes() == before
    state = json.loads(podman(provisioned["ns"], "inspect", "airlock-gateway").stdout)[0]
    assert state["HostConfig"]["Memory"] == 1 << 30
    assert any(mount.get("Destination") == "/shared-models" and not mount.get("RW", True)
               for mount in state["Mounts"]), state["Mounts"]


def test_a_killed_container_is_brought_back(provisioned, trained) -> None:
    ns = provisioned["ns"]
    state = json.loads(podman(ns, "inspect", "airlock-gateway").stdout)[0]
    os.kill(state["State"]["Pid"], signal.SIGKILL)
    deadline = time.monotonic() + 180
    while True:
        now = json.loads(podman(ns, "inspect", "airlock-gateway").stdout)[0]
        if now["State"]["Running"] and now["State"]["Pid"] != state["State"]["Pid"]:
            break
        assert time.monotonic() < deadline, f"the gateway container did not come back: {now['State']}"
        time.sleep(1)
    _answers_by(provisioned, trained, deadline)


def _answers_by(provisioned, key: str, deadline: float) -> None:
    """The trained answer, once the services are back (the engine loads for a minute)."""
    while True:
        try:
            assert _ask(provisioned, key).strip() == QA[0][-1]["content"]
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(2)


def test_with_the_store_down_serving_goes_on_and_training_fails_naming_the_store(provisioned, trained) -> None:
    ns = provisioned["ns"]
    podman(ns, "stop", "--time", "5", "airlock-store")
    try:
        assert _ask(provisioned, trained).strip() == QA[0][-1]["content"]
        failed = podman(ns, "exec", "airlock-worker", "airlock", "workflow", "run", SITE_QUICKSTART,
                        "--wait", "--set", "finetune.seed=7", check=False)
        said = failed.stdout + failed.stderr
        assert failed.returncode != 0, said
        assert "10.89.77.10:9000" in said and "not reachable" in said, said
    finally:
        podman(ns, "start", "airlock-store")
    deadline = time.monotonic() + 120
    while True:
        again = podman(ns, "exec", "airlock-worker", "airlock", "workflow", "run", SITE_QUICKSTART,
                       "--wait", "--set", "finetune.seed=7", check=False)
        if "succeeded" in again.stdout + again.stderr:
            break
        assert time.monotonic() < deadline, again.stdout + again.stderr
        time.sleep(5)
    assert _ask(provisioned, trained).strip() == QA[0][-1]["content"]


def test_an_upgrade_that_fails_on_a_host_leaves_the_running_release_serving(provisioned, trained,
                                                                          later_bundles) -> None:
    """A later release is a real signed bundle without service images: the host's install refuses it
    (containers mode runs the images), and upgrade.yml leaves N current and serving."""
    state_file = provisioned["prefix"] / "state.json"
    before = json.loads(state_file.read_text())["current"]
    done = provisioned["ns"].run(playbook_argv(provisioned["playbooks"], provisioned["inventory"],
                                               "-e", f"airlock_bundle_dir={later_bundles['bare']}", playbook="upgrade.yml"),
                                 env=provisioned["env"], timeout=1800, check=False)
    assert done.returncode != 0
    said = done.stdout
    assert "not among this bundle's images (it has none)" in said, said[-4000:]
    assert f"{before} is current and serving again on this host" in said, said[-4000:]
    assert json.loads(state_file.read_text())["current"] == before
    assert _ask(provisioned, trained).strip() == QA[0][-1]["content"]


PROBE_SCRIPT = r"""
import json, ssl, sys, time
from pathlib import Path
import httpx
from openai import OpenAI
url, cert, key, model, messages, log, stop = json.loads(sys.argv[1])
client = OpenAI(base_url=url, api_key=key, max_retries=0,
                http_client=httpx.Client(verify=ssl.create_default_context(cafile=cert), trust_env=False, timeout=30))
with open(log, "a") as out:
    while not Path(stop).exists():
        try:
            reply = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=40)
            said = {"t": time.time(), "answer": reply.choices[0].message.content}
        except Exception as exc:
            said = {"t": time.time(), "error": type(exc).__name__}
        out.write(json.dumps(said) + "\n")
        out.flush()
        time.sleep(0.5)
"""


def _restarted_in_turn(output: str) -> list[str]:
    """The services whose container the play replaced, in order, each one's health check passed
    before the next was replaced."""
    services = re.findall(r"included: \S*/airlock_services/tasks/container\.yml for \S+ => \(item=(\w+)\)", output)
    order, task, turn, replaced = [], "", -1, False
    for line in output.splitlines():
        if line.startswith("TASK ["):
            task = line
            if "Run the service's container]" in task:
                turn, replaced = turn + 1, False
        elif line.startswith("changed:") and "Run the service's container]" in task:
            replaced = True
        elif line.startswith("ok:") and "Wait for the container's health check]" in task and replaced:
            order.append(services[turn])
            replaced = False
    return order


def test_an_upgrade_restarts_each_service_on_the_new_release_in_turn(provisioned, trained, later_bundles,
                                                                     tmp_path) -> None:
    """Release N+1 with its images: installed beside N on the host, the store and then the engine, the
    worker and the gateway replaced by N+1's containers one at a time, each healthy before the next,
    and the trained alias served by N+1 with the key made under N. A second process asks the gateway
    all along; every answer it gets is the trained one, and the longest stretch without one is said."""
    newer = later_bundles["next"]
    manifest = json.loads((newer / "manifest.json").read_bytes())
    target = f"{manifest['version']}-{manifest['sequence']}"
    state_file = provisioned["prefix"] / "state.json"
    before = json.loads(state_file.read_text())["current"]
    log, stop = tmp_path / "probe.jsonl", tmp_path / "stop"
    args = json.dumps([_url(provisioned), str(_cert(provisioned)), trained, ALIAS, QA[0][:-1], str(log), str(stop)])
    probe = subprocess.Popen(provisioned["ns"].prefix() + [sys.executable, "-c", PROBE_SCRIPT, args])
    started = time.monotonic()
    try:
        done = provisioned["ns"].run(playbook_argv(provisioned["playbooks"], provisioned["inventory"],
                                                   "-e", f"airlock_bundle_dir={newer}", playbook="upgrade.yml"),
                                     env=provisioned["env"], timeout=2400, check=False)
    finally:
        stop.touch()
        probe.wait(timeout=60)
    assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-2000:]
    print(f"upgrade to {target} took {time.monotonic() - started:.0f} s")
    state = json.loads(state_file.read_text())
    assert (state["current"], state["previous"]) == (target, before), state
    for service in SERVICES:
        image = json.loads(podman(provisioned["ns"], "inspect", f"airlock-{service}").stdout)[0]["ImageName"]
        assert image == f"localhost/airlock-{'gateway' if service == 'store' else service}:{target}", (service, image)
    assert _restarted_in_turn(done.stdout) == ["engine", "worker", "gateway"], done.stdout[-6000:]
    _answers_by(provisioned, trained, time.monotonic() + 120)
    probes = [json.loads(line) for line in log.read_text().splitlines()]
    answered = [p["t"] for p in probes if "answer" in p]
    assert answered and {p["answer"] for p in probes if "answer" in p} == {QA[0][-1]["content"]}, probes[-5:]
    # One gateway and one engine on one host: while they are replaced the alias is not served.
    stretch = max(b - a for a, b in zip([probes[0]["t"], *answered], [*answered, probes[-1]["t"]]))
    print(f"{len(answered)} of {len(probes)} probes answered during the upgrade; the longest stretch without "
          f"an answer {stretch:.0f} s")
    # As an operator does after an upgrade, the inventory names the new bundle from now on.
    inventory = json.loads(provisioned["inventory"].read_text())
    inventory["all"]["vars"]["airlock_bundle_dir"] = str(newer)
    provisioned["inventory"].write_text(json.dumps(inventory, indent=1))


def test_the_older_bundle_after_an_upgrade_is_refused_before_anything_changes(provisioned, cpu_bundle,
                                                                             later_bundles) -> None:
    """Release N is still installed beside N+1; site.yml given N's bundle would point the services back
    at it. It stops on the host, naming both releases, with nothing changed."""
    older, _ = cpu_bundle
    done = provisioned["ns"].run(playbook_argv(provisioned["playbooks"], provisioned["inventory"],
                                               "-e", f"airlock_bundle_dir={older}"),
                                 env=provisioned["env"], timeout=1200, check=False)
    assert done.returncode != 0
    said, current = done.stdout, json.loads((provisioned["prefix"] / "state.json").read_text())["current"]
    assert f"runs release {current}, and the bundle {older} is release" in said, said[-4000:]
    assert recap(said)["changed"] == 0
    image = json.loads(podman(provisioned["ns"], "inspect", "airlock-store").stdout)[0]["ImageName"]
    assert image.endswith(f":{current}")




def _as_service_user(provisioned, command: str, *, user: str = "airlock", env: str = "") -> subprocess.CompletedProcess:
    """An airlock command on the host, with the settings the play wrote (and `env`, shell assignments),
    as docs/provisioning.md shows."""
    root, prefix = provisioned["root"], provisioned["prefix"]
    script = (f"set -a; . {root / 'etc' / 'airlock.env'}; . {root / 'etc' / 'airlock-store.env'}; "
              f"AIRLOCK_HOME={root / 'home'}; AIRLOCK_S3_CA={root / 'etc' / 'store-ca.crt'}; {env} set +a; "
              f"exec {prefix / 'current' / 'venv' / 'bin' / 'airlock'} {command}")
    return provisioned["ns"].run(["runuser", "-u", user, "--", "sh", "-c", script], check=False, timeout=600)


def test_a_backup_restored_over_the_home_serves_the_same_alias_with_the_same_key(provisioned, trained) -> None:
    ns, home = provisioned["ns"], provisioned["root"] / "home"
    # beside the home, where the service user can reach it (pytest's own temporary folder is root's alone)
    backups = provisioned["root"].parent / "backups"
    backups.mkdir()
    os.chown(backups, 10001, 10001)
    # The operator's passphrase, from the environment here (a 0600 file works too: docs/backup.md).
    passphrase = "AIRLOCK_BACKUP_PASSPHRASE='a passphrase kept apart from the backup';"
    made = _as_service_user(provisioned, f"backup {backups / 'b1'}", env=passphrase)
    assert made.returncode == 0, made.stdout + made.stderr
    podman(ns, "stop", "--time", "10", "airlock-gateway", "airlock-worker", "airlock-engine")
    try:
        restored = _as_service_user(provisioned, f"restore --replace {backups / 'b1'}", user="root", env=passphrase)
        assert restored.returncode == 0, restored.stdout + restored.stderr
        ns.run(["chown", "-R", "10001:10001", str(home)])
        ns.run(["chmod", "0700", str(home)])  # private, or the services refuse it
        assert list(home.parent.glob("home.before-restore-*")), "the replaced home was not kept"
    finally:
        podman(ns, "start", "airlock-engine", "airlock-worker", "airlock-gateway")
    _answers_by(provisioned, trained, time.monotonic() + 300)


def _pair(folder: Path, name: str, san: str) -> tuple[Path, Path]:
    """A real certificate and key made by openssl, as an operator brings them."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={name}", "-addext",
                    f"subjectAltName={san}", "-days", "30"], capture_output=True, check=True)
    key.chmod(0o600)
    return cert, key


def _with_tls(provisioned, cert: Path, key: Path, *more: str) -> subprocess.CompletedProcess:
    extra = json.dumps({"airlock_services_tls_cert_src": str(cert), "airlock_services_tls_key_src": str(key)})
    return provisioned["ns"].run(playbook_argv(provisioned["playbooks"], provisioned["inventory"], "-e", extra, *more),
                                 env=provisioned["env"], timeout=1800, check=False)


@pytest.mark.parametrize("case", ["a key that is not the certificate's", "a certificate for another name"])
def test_a_wrong_operator_pair_is_refused_before_anything_changes(provisioned, tmp_path, case) -> None:
    cert, _key = _pair(tmp_path, "airlock-gw", "DNS:airlock-gw.example")
    other_cert, other_key = _pair(tmp_path, "other", "DNS:other.example")
    cert, key = (cert, other_key) if case.startswith("a key") else (other_cert, other_key)
    installed = _cert(provisioned).read_bytes()
    done = _with_tls(provisioned, cert, key, "-e", "airlock_gateway_name=airlock-gw.example")
    assert done.returncode != 0
    said = done.stdout
    assert str(cert) in said and (str(key) in said if case.startswith("a key") else "airlock-gw.example" in said), said[-3000:]
    assert recap(said)["changed"] == 0, _changed_tasks(said)
    assert _cert(provisioned).read_bytes() == installed


def test_the_operators_certificate_is_installed_and_served(provisioned, trained, tmp_path) -> None:
    """Last in this module: afterwards the gateway serves the operator's certificate, for localhost."""
    cert, key = _pair(tmp_path, "localhost", "DNS:localhost")
    done = _with_tls(provisioned, cert, key, "-e", "airlock_gateway_name=localhost")
    assert done.returncode == 0, done.stdout[-6000:]
    # after an upgrade, a backup restored and the play run again, the models bundle is still installed as it was
    changed = _changed_tasks(done.stdout)
    assert not [task for task in changed if "models" in task or "home" in task], changed
    fingerprint = subprocess.run(["openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in", str(cert)],
                                 capture_output=True, text=True, check=True).stdout.strip().split("=", 1)[1]
    assert f"certificate SHA-256 fingerprint {fingerprint}" in done.stdout
    answer = chat(provisioned["ns"].run, url=f"https://localhost:{provisioned['port']}/v1", cert=cert, key=trained,
                  model=ALIAS, messages=QA[0][:-1])
    assert answer.strip() == QA[0][-1]["content"]
