"""What gateway/deps.py hands the /api routes and the web pages: the Airlock `create_app` opened
(no second one with its own database handle), and for a key the queue's `Caller` and the
datasets' `Reader`, with each role's rights read from the role table."""

from __future__ import annotations

import httpx

from airlock.access.roles import ROLES
from airlock.datasets.service import Reader
from airlock.gateway.deps import caller_of, reader_of
from airlock.workflow.queue import MAX_PRIORITY, PRIORITIES, Caller

RECORD = b'{"prompt": "2+2?", "completion": "4"}\n'


def test_routes_use_the_airlock_create_app_opened(offline_gateway):
    state = offline_gateway.app.state
    opened = state.airlock
    assert opened.meta is state.meta  # one handle: the registry's, the recorder's and the routes'
    trainer = {"authorization": f"Bearer {offline_gateway.new_key('trainer')}"}
    upload = httpx.post(f"{offline_gateway.url}/api/datasets", params={"name": "sums"}, content=RECORD,
                        headers={**trainer, "content-type": "application/jsonl"})
    assert upload.status_code == 201, upload.text
    listed = httpx.get(f"{offline_gateway.url}/api/datasets", headers=trainer)
    assert [d["name"] for d in listed.json()] == ["sums"]
    # Serving requests built nothing beside it: the same context, reading the same database.
    assert state.airlock is opened and state.airlock.meta is state.meta
    assert state.meta.one("SELECT COUNT(*) AS n FROM datasets")["n"] == 1


def test_each_role_reaches_in_the_queue_what_the_role_table_gives_it():
    callers = {role: caller_of({"id": "k1", "role": role, "holder": None}) for role in ROLES}
    assert callers["inference"] == Caller("key:k1", sees_all=False, manages_all=False,
                                          max_priority=PRIORITIES["high"], changes=False)
    assert callers["trainer"] == Caller("key:k1", sees_all=False, manages_all=False,
                                        max_priority=PRIORITIES["high"], changes=True)
    assert callers["approver"] == Caller("key:k1", sees_all=True, manages_all=False,
                                         max_priority=PRIORITIES["high"], changes=False)
    assert callers["admin"] == Caller("key:k1", sees_all=True, manages_all=True, max_priority=MAX_PRIORITY,
                                      changes=True)
    # The one rule for who may change a run, as /api enforces it and the pages' buttons follow it.
    assert [callers[r].may_change("key:k1") for r in ROLES] == [False, True, False, True]
    assert [callers[r].may_change("key:other") for r in ROLES] == [False, False, False, True]


def test_each_role_reads_the_datasets_the_role_table_gives_it():
    readers = {role: reader_of({"id": "k1", "role": role, "holder": "alice"}) for role in ROLES}
    assert readers == {"inference": Reader("alice", reads_all=False), "trainer": Reader("alice", reads_all=False),
                       "approver": Reader("alice", reads_all=True), "admin": Reader("alice", reads_all=True)}
    assert reader_of({"id": "k2", "role": "trainer", "holder": None}).holder == "key-k2"


def test_the_gateway_starts_and_answers_its_key_routes_while_the_s3_store_is_down(tmp_path):
    """The context is opened when the gateway starts, its store only when first used: an S3 store
    that is down (a closed port here) keeps neither /v1's gateway nor the key routes from answering."""
    from gateway_support import gateway_settings, run_gateway
    from vllm_fixtures import free_port

    settings = gateway_settings(tmp_path / "home", store_backend="s3", s3_endpoint=f"127.0.0.1:{free_port()}")
    for gateway in run_gateway(settings):
        assert httpx.get(f"{gateway.url}/healthz").json() == {"status": "ok"}
        keys = httpx.get(f"{gateway.url}/api/keys", headers={"authorization": f"Bearer {gateway.key}"})
        assert keys.status_code == 200 and len(keys.json()) == 1
