"""The browser the web UI's tests drive: Debian's chromium (install.sh installs it), headless,
through sync Playwright; a pytest plugin (tests/conftest.py names it) so that the web tests and
the end-to-end tests against a whole appliance share it."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, sync_playwright


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """One headless chromium for each test process (xdist's workers start one each)."""
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
