"""The browser the web UI's tests drive: Debian's chromium (install.sh installs it), headless,
through sync Playwright; a pytest plugin (tests/conftest.py names it) so that the web tests and
the end-to-end tests against a whole appliance share it."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, sync_playwright


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """A headless chromium for a test module. Not for the whole session: sync Playwright runs an
    event loop in the test process's main thread while it is open, and every later test of the
    process would find a running loop there (one that asserts its code runs off the loop did)."""
    executable = shutil.which("chromium")
    if executable is None:
        reason = "chromium is not installed (./install.sh installs Debian's chromium package)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI has it, so there the browser tests run")
        pytest.skip(reason)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True)
        yield browser
        browser.close()
