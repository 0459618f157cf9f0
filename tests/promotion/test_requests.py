"""Promotion requests as their viewers list them, and a bad filter named."""

from __future__ import annotations

import pytest
from gate_support import protect, request_for, signed_candidate

from airlock.errors import InvalidInput
from airlock.promotion.requests import Viewer, list_requests


def test_authors_list_their_own_requests_reviewers_all_and_a_bad_state_is_named(airlock, tmp_path):
    protect(airlock, "prod")
    protect(airlock, "other")
    mine = request_for(airlock, signed_candidate(airlock, tmp_path, 1), "prod", author="alice")
    theirs = request_for(airlock, signed_candidate(airlock, tmp_path, 2), "other", author="bob")
    assert [r["id"] for r in list_requests(airlock, Viewer("alice"))] == [mine["id"]]
    assert [r["id"] for r in list_requests(airlock, Viewer("zed", reviewer=True))] == [theirs["id"], mine["id"]]
    assert list_requests(airlock, Viewer("zed", reviewer=True), state="approved") == []
    with pytest.raises(InvalidInput, match="state 'bogus': a request is pending, approved, rejected, voided"):
        list_requests(airlock, Viewer("alice"), state="bogus")
