"""The audit log as a hash chain: every row commits to the row before it.

A row's hash is the sha256 of a canonical JSON of its id, time, actor, action, subject, detail
and the previous row's hash; the first row points at GENESIS. Editing a row breaks its own hash,
deleting one leaves a gap in the ids (AUTOINCREMENT never reuses them) and a prev_hash that
points at nothing, and deleting the newest rows leaves `sqlite_sequence` ahead of the last id.
Anyone who can rewrite the whole file and recompute every hash is caught only by comparing
the head hash with a copy kept elsewhere (`verify(meta, head=...)`).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from itertools import chain
from typing import Any

from airlock.errors import InvalidInput
from airlock.meta.anchor import Anchor, Anchors, read_anchors
from airlock.meta.chain import GENESIS, COLUMNS, row_hash
from airlock.meta.db import Meta

@dataclass
class Problem:
    kind: str  # "edited", "deleted", "inserted", "truncated", "rewritten" or "anchor"
    id: int | None  # the row edited or inserted, or the first id missing
    message: str


@dataclass
class Report:
    rows: int
    head_id: int | None
    head_hash: str
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, **asdict(self)}

    def summary(self) -> str:
        if self.ok:
            return f"audit log intact: {self.rows} rows, head hash {self.head_hash}"
        return f"audit log tampered with: {self.problems[0].message}"


_START = {"id": 0, "hash": GENESIS}
MAX_LINES_NAMED = 20  # bad anchor lines named one by one; the rest are counted  # what the first row (id 1) points back at


def _link(before: dict | None, row: dict | None) -> bool | None:
    """Does `row` point at `before`? None where there is no row or the ids jump (a deletion)."""
    if before is None or row is None or row["id"] != before["id"] + 1:
        return None
    return row["prev_hash"] == before["hash"]


def _verdict(row: dict, link_in: bool | None, link_out: bool | None, last: bool) -> Problem | None:
    """What a row's own hash and its two links say about the row itself."""
    rid = row["id"]
    if row["hash"] is None:
        return Problem("inserted", rid, f"row {rid} was inserted: it has no hash, so it was written "
                                        "around the chain")
    if row_hash(row) != row["hash"]:
        if link_in is not True and link_out is not True:
            return Problem("inserted", rid, f"row {rid} was inserted: its hash does not match its "
                                            "contents and no neighbour links to it")
        return Problem("edited", rid, f"row {rid} was edited: its contents no longer match its hash")
    if link_in is False and (link_out is False or last):
        return Problem("inserted", rid, f"row {rid} was inserted: its prev_hash is not the hash "
                                        f"of row {rid - 1}")
    return None


def _windows(rows: Iterable[dict]) -> Iterator[tuple]:
    """(before, row, after, after_next) for every row, streaming: a log can be long."""
    window: deque = deque(maxlen=4)
    for item in chain([_START], rows, [None, None]):
        window.append(item)
        if len(window) == 4:
            yield tuple(window)


def _span(first: int, last: int) -> str:
    return f"row {first} was" if first == last else f"rows {first}-{last} were"


def verify(meta: Meta, head: str | None = None) -> Report:
    """Walk the log in id order and report every problem, the first one first.

    `head`, a head hash recorded earlier, must still be the hash of some row: this catches a
    log rewritten as a whole, with every hash recomputed.
    """
    conn = meta.db.conn
    conn.execute("BEGIN")  # one snapshot for the rows and sqlite_sequence, while writers go on
    try:
        cursor = conn.execute(f"SELECT {COLUMNS} FROM audit ORDER BY id")
        names = [d[0] for d in cursor.description]
        problems: list[Problem] = []
        count, last, head_seen = 0, _START, head in (None, GENESIS)
        for before, row, after, after_next in _windows(dict(zip(names, r, strict=True)) for r in cursor):
            count, last, head_seen = count + 1, row, head_seen or row["hash"] == head
            if row["id"] > before["id"] + 1:
                first = before["id"] + 1
                problems.append(Problem("deleted", first, f"{_span(first, row['id'] - 1)} deleted: "
                                                          f"ids jump from {before['id']} to {row['id']}"))
            link_out = _link(row, after)
            if problem := _verdict(row, _link(before, row), link_out, after is None):
                problems.append(problem)
            elif link_out is False and not _verdict(after, False, _link(after, after_next), after_next is None):
                # The next row is sound, so it is this row's stored hash that changed.
                problems.append(Problem("edited", row["id"], (
                    f"row {row['id']} was edited and its hash recomputed: row {after['id']} still "
                    "records its old hash as prev_hash")))
        seq_row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'audit'").fetchone()
    finally:
        conn.execute("COMMIT")
    seq = seq_row[0] if seq_row else 0
    if seq > last["id"]:
        problems.append(Problem("truncated", last["id"] + 1, (
            f"the newest {_span(last['id'] + 1, seq)} deleted: ids reached {seq} but "
            + (f"the last row is {last['id']}" if count else "no rows remain"))))
    elif seq < last["id"]:
        problems.append(Problem("edited", None, (
            f"sqlite_sequence was edited: it says ids reached {seq} but row {last['id']} exists")))
    if not head_seen:
        problems.append(Problem("rewritten", None, (
            f"the recorded head hash {head} is no row's hash: the log was rewritten, or cut before it")))
    return Report(rows=count, head_id=last["id"] or None, head_hash=last["hash"], problems=problems)


def verify_anchored(meta: Meta, head: str | None = None) -> Report:
    """`verify`, and where the database has anchors (meta.anchors), `check_anchors` after it."""
    report = verify(meta, head=head)
    if meta.anchors is not None:
        report.problems += check_anchors(meta, meta.anchors)
    return report


def check_anchors(meta: Meta, anchors: Anchors) -> list[Problem]:
    """Compare the database with the signed anchors kept outside it (meta/anchor.py).

    Every anchor line must carry the appliance key's signature, and the database must still hold
    each anchored row with the anchored hash: rows deleted from the end, with `sqlite_sequence`
    reset, leave a chain that is intact on its own, but not one that matches its newest anchor.
    """
    rows = meta.one("SELECT COUNT(*) AS n, MAX(id) AS last FROM audit") or {"n": 0, "last": None}
    if not anchors.path.is_file():
        if not rows["n"]:
            return []
        return [Problem("anchor", None, f"{anchors.path}: no anchor file, yet the log holds {rows['n']} rows: "
                                        "the anchors were deleted, or AIRLOCK_AUDIT_ANCHORS points elsewhere")]
    problems: list[Problem] = []
    anchored: dict[int, Anchor] = {}
    bad_lines = 0
    for item in read_anchors(anchors.path, anchors.key().public_key()):
        if isinstance(item, str):
            bad_lines += 1
            if bad_lines <= MAX_LINES_NAMED:  # a file signed by another key would name every line
                problems.append(Problem("anchor", None, item))
        else:
            anchored[item.id] = item
    if bad_lines > MAX_LINES_NAMED:
        problems.append(Problem("anchor", None, f"{anchors.path}: {bad_lines - MAX_LINES_NAMED} more lines "
                                                "are unreadable or not signed by this appliance's key"))
    stored = {r["id"]: r["hash"] for r in meta.query("SELECT id, hash FROM audit WHERE id >= ?",
                                                        (min(anchored, default=0),))}
    last = rows["last"] or 0
    if anchored and (newest := anchored[max(anchored)]).id > last:
        # A row deleted in the middle leaves a gap the chain names; only the tail needs the anchors.
        problems.append(Problem("truncated", last + 1, (
            f"the newest {_span(last + 1, newest.id)} deleted: the anchor at {anchors.path} line {newest.line} "
            f"({newest.at}) names row {newest.id}, the database ends at row {last}")))
    problems += [Problem("edited", i, f"row {i} was rewritten after it was anchored: its hash is not the one "
                                      f"signed at {anchors.path} line {a.line}")
                 for i, a in sorted(anchored.items()) if i in stored and stored[i] != a.hash]
    return problems


def parse_when(value: str | datetime | None, *, end: bool = False) -> str | None:
    """An ISO date or date/time -> the stored `at` format (UTC, milliseconds) for comparison.

    A bare date given as an end means the end of that day, so `--until 2025-03-01` includes it.
    """
    if value is None or isinstance(value, str) and not value.strip():
        return None
    if isinstance(value, str):
        try:
            when = datetime.fromisoformat(value.strip())
        except ValueError:
            raise InvalidInput(f"{value!r} is not an ISO date or date/time, such as 2025-03-01 "
                               "or 2025-03-01T14:30") from None
        if end and _is_bare_date(value.strip()):
            when += timedelta(days=1)
    else:
        when = value
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    return when.astimezone(UTC).isoformat(timespec="milliseconds")


def _is_bare_date(value: str) -> bool:
    try:
        date.fromisoformat(value)
    except ValueError:
        return False
    return True


def list_rows(meta: Meta, actor: str | None = None, action: str | None = None,
              since: str | datetime | None = None, until: str | datetime | None = None,
              limit: int | None = None, subject: str | None = None,
              before_id: int | None = None) -> list[dict[str, Any]]:
    """Audit rows oldest first (as the log reads); `limit` keeps the newest N of the matches.

    `action` is exact (`apikey.create`) or, ending in a dot, a prefix (`apikey.`). `since` is
    inclusive, `until` exclusive. `subject` is exact. `before_id` keeps the rows older than that
    id: the next page of a listing read newest first, stable while new rows are appended. Each
    row carries its detail parsed, as `detail`.
    """
    where, params = [], []
    for column, value in (("actor", actor), ("subject", subject)):
        if value:
            where.append(f"{column} = ?")
            params.append(value)
    if before_id is not None:
        where.append("id < ?")
        params.append(before_id)
    if action and action.endswith("."):
        where.append("substr(action, 1, ?) = ?")
        params += [len(action), action]
    elif action:
        where.append("action = ?")
        params.append(action)
    for op, value in ((">=", parse_when(since)), ("<", parse_when(until, end=True))):
        if value:
            where.append(f"at {op} ?")
            params.append(value)
    if limit is not None and limit < 1:
        raise InvalidInput(f"--limit {limit}: expected a positive number of rows")
    sql = f"SELECT {COLUMNS} FROM audit" + (" WHERE " + " AND ".join(where) if where else "")
    sql += " ORDER BY id DESC" + (" LIMIT ?" if limit else "")
    rows = meta.query(sql, tuple(params + ([limit] if limit else [])))
    for row in rows:
        row["detail"] = _detail_of(row.pop("detail_json"))
    return rows[::-1]


def iter_rows(meta: Meta, since: str | None = None) -> Iterator[dict[str, Any]]:
    """Rows oldest first, streamed (an export can be the whole log): from a row id when `since` is a
    number, else at or after an ISO date/time. `since` is checked before the first row is read."""
    if since is not None and since.strip().isdigit():
        where, param = "id >= ?", int(since)
    else:
        where, param = "at >= ?", parse_when(since) or ""
    cursor = meta.db.conn.execute(f"SELECT {COLUMNS} FROM audit WHERE {where} ORDER BY id", (param,))
    names = [d[0] for d in cursor.description]

    def rows() -> Iterator[dict[str, Any]]:
        for values in cursor:
            row = dict(zip(names, values, strict=True))
            row["detail"] = _detail_of(row.pop("detail_json"))
            yield row
    return rows()


def _detail_of(stored: str | None) -> Any:
    """A row's detail parsed; one edited into something that is not JSON is kept as it stands,
    so the listing of a tampered log still shows the row that `verify` names."""
    try:
        return json.loads(stored or "{}")
    except ValueError:
        return {"unreadable": stored}
