"""Signed-in browsers: the web UI's sessions, each standing for one API key.

A person signs in with an API key of a role that may use the UI; the browser then holds only a
random session token (in an HttpOnly cookie), never the key. The gateway keeps sessions in memory
(a restart signs everyone out, which costs a sign-in and leaks nothing) by the token's sha256, so
not even a memory dump of the gateway hands out a usable cookie. Each session has an expiry and a
CSRF token that every change made with the cookie must carry. The key behind a session is looked
up again on every request, so revoking the key, or its expiry, ends the session at once.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass

from airlock.access.keys import check_usable
from airlock.access.roles import WEB_SIGN_IN, may, roles_with
from airlock.errors import Forbidden, Unauthorized

COOKIE = "airlock_session"
CSRF_HEADER = "x-csrf-token"


@dataclass(frozen=True)
class Session:
    key_id: str
    csrf: str
    expires_at: float  # time.time()


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Sessions:
    def __init__(self, lifetime_s: float) -> None:
        self.lifetime_s = lifetime_s
        self._by_digest: dict[str, Session] = {}
        self._lock = threading.Lock()

    def start(self, key: dict) -> tuple[str, Session]:
        """A new session for a checked key row: (the cookie's token, the session)."""
        if not may(key, WEB_SIGN_IN):
            *some, last = roles_with(WEB_SIGN_IN)
            raise Forbidden(f"API key {key['id']} has the role {key['role']!r}, which cannot sign in to the web UI; "
                            f"sign in with a key of role {', '.join(some)} or {last}")
        token = secrets.token_urlsafe(32)
        session = Session(key_id=key["id"], csrf=secrets.token_urlsafe(32), expires_at=time.time() + self.lifetime_s)
        with self._lock:
            self._forget_expired()
            self._by_digest[_digest(token)] = session
        return token, session

    def find(self, token: str | None) -> Session | None:
        """The live session of a cookie's token, or None (no cookie, unknown, ended or expired)."""
        if not token:
            return None
        with self._lock:
            session = self._by_digest.get(_digest(token))
            if session is not None and session.expires_at <= time.time():
                del self._by_digest[_digest(token)]
                return None
            return session

    def end(self, token: str | None) -> None:
        if token:
            with self._lock:
                self._by_digest.pop(_digest(token), None)

    def _forget_expired(self) -> None:
        now = time.time()
        for digest in [d for d, s in self._by_digest.items() if s.expires_at <= now]:
            del self._by_digest[digest]


def session_token(cookie_header: str) -> str | None:
    """The session's token in a raw Cookie header, if it holds one."""
    from http.cookies import CookieError, SimpleCookie

    jar = SimpleCookie()
    try:
        jar.load(cookie_header)
    except CookieError:
        return None
    morsel = jar.get(COOKIE)
    return morsel.value if morsel is not None else None


def key_of_session(session: Session | None, keys: dict[str, dict]) -> dict:
    """The key row a session stands for, checked again now; Unauthorized when it no longer holds."""
    if session is None:
        raise Unauthorized("not signed in, or the session has expired: sign in again")
    row = keys.get(session.key_id)
    if row is None:
        raise Unauthorized(f"API key {session.key_id} no longer exists: its session has ended")
    return check_usable(row)


def check_csrf(session: Session, presented: str | None) -> None:
    """A change made with the session's cookie must carry the session's CSRF token: another site
    can make the browser send the cookie, but cannot read the token out of our pages."""
    if not presented or not hmac.compare_digest(presented, session.csrf):
        raise Forbidden("this change lacks the page's CSRF token (X-CSRF-Token): reload the page and try again")
