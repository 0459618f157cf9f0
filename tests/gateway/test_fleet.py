"""The engine list (AIRLOCK_ENGINES): what it means, and every mistake refused by name."""

from __future__ import annotations

import json

import pytest

from airlock.config import Settings
from airlock.errors import InvalidInput
from airlock.serve.fleet import LOCAL, check_socket_path, fleet, parse_engines


def test_without_a_list_the_appliance_is_one_engine_in_its_old_folder(tmp_path):
    settings = Settings(home=tmp_path, serve_base_model="airlock-tiny")
    (only,) = fleet(settings)
    assert (only.engine, only.model, only.name, only.folder) == ("airlock-tiny", "airlock-tiny", "airlock-tiny-0",
                                                                 settings.engine_dir)
    assert only.local and only.gpus is None and only.cpus is None


def test_two_models_and_replicas_each_get_a_private_folder_and_their_placement(tmp_path_factory):
    settings = Settings(home=tmp_path_factory.mktemp("fleet"))  # short: the sockets' paths must fit
    text = json.dumps([{"model": "airlock-tiny", "replicas": 2, "cpus": ["0", "1"]},
                       {"name": "big", "model": "smollm2-135m-instruct", "gpus": ["0,1"], "tensor_parallel_size": 2,
                        "hosts": ["gpu-2.site:8443"]}])
    replicas = fleet(settings, text)
    assert [r.name for r in replicas] == ["airlock-tiny-0", "airlock-tiny-1", "big-0"]
    assert replicas[0].folder == settings.engine_dir
    assert replicas[1].folder == settings.run_dir / "engines" / "airlock-tiny-1"
    assert len({r.folder for r in replicas}) == 3
    assert [r.cpus for r in replicas[:2]] == ["0", "1"] and replicas[0].host == LOCAL
    assert (replicas[2].gpus, replicas[2].host, replicas[2].tensor_parallel_size) == ("0,1", "gpu-2.site:8443", 2)
    assert not replicas[2].local


@pytest.mark.parametrize(("engines", "words"), [
    ("not json", "AIRLOCK_ENGINES is not JSON"),
    ("[]", "a JSON array of at least one engine"),
    ('[{"model": "airlock-tiny", "replica": 2}]', "AIRLOCK_ENGINES[0] (airlock-tiny): replica: Extra inputs"),
    ('[{"model": "airlock-tiny", "replicas": 0}]', "replicas: Input should be greater than or equal to 1"),
    ('[{"model": "airlock-tiny", "replicas": 2, "gpus": ["0"]}]', "gpus names 1 replicas but replicas is 2"),
    ('[{"model": "x", "gpus": ["0"], "tensor_parallel_size": 2}]', "gpus[0] = '0': 2 GPU ids"),
    ('[{"model": "x", "hosts": ["evil host"]}]', "hosts[0] = 'evil host': '' for this host, or HOST:PORT"),
    ('[{"model": "../etc"}]', "'../etc' is not a model name"),
    ('[{"model": "x", "name": "A/B"}]', "name 'A/B'"),
    ('[{"model": "x"}, {"model": "x"}]', "names the engine x more than once"),
])
def test_every_mistake_is_refused_naming_the_engine_and_the_field(engines, words):
    with pytest.raises(InvalidInput) as info:
        parse_engines(engines)
    assert words in str(info.value)


def test_a_socket_path_too_long_for_unix_is_refused_naming_the_replica(tmp_path):
    engines = json.dumps([{"name": "e" * 60, "model": "airlock-tiny", "replicas": 2}])
    settings = Settings(home=tmp_path)
    first, second = fleet(settings, engines)
    check_socket_path(settings, first)
    with pytest.raises(InvalidInput, match=r"engine replica e{60}-1: its socket .* bytes long, and a Unix socket "
                                           r"path holds at most 107"):
        check_socket_path(settings, second)
    check_socket_path(Settings(home=tmp_path, engine_transport="tcp"), second)  # no socket there
