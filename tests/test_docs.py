"""/docs in a real headless browser (Debian's chromium through chromedriver): the API
description renders, every operation is listed, and everything the page loads comes from
the gateway itself (no CDN: it works offline) without a script or CSP error."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from gateway.testing.servers import ServerThread
from tests.test_dashboard import CHROMEDRIVER, CHROMIUM, FLAGS


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'gateway.db'}"


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def test_docs_page_renders_every_operation_from_the_gateway_alone(
    gateway: ServerThread, browser: webdriver.Chrome,
) -> None:
    spec = httpx.get(gateway.url + "/openapi.json").json()
    operations = sum(1 for ops in spec["paths"].values() for m in ops
                     if m in ("get", "post", "delete"))
    browser.get(gateway.url + "/docs")
    deadline = time.monotonic() + 20
    while len(browser.find_elements(By.CSS_SELECTOR, ".opblock")) < operations:
        assert time.monotonic() < deadline, browser.find_element(By.TAG_NAME, "body").text
        time.sleep(0.1)
    assert len(browser.find_elements(By.CSS_SELECTOR, ".opblock")) == operations
    title = browser.find_element(By.CSS_SELECTOR, ".info .title").text
    assert title.startswith("batch-gateway")
    paths = {e.text.replace("\u200b", "") for e in
             browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
    assert {"/v1/files", "/v1/batches/{id}", "/health/readiness", "/metrics"} <= paths

    # Open one operation: its responses render from the description.
    browser.find_element(By.CSS_SELECTOR, "#operations-batches-retrieveBatch button").click()
    deadline = time.monotonic() + 10
    while not browser.find_elements(By.CSS_SELECTOR,
                                    "#operations-batches-retrieveBatch .responses-table"):
        assert time.monotonic() < deadline
        time.sleep(0.1)

    urls = []
    for entry in browser.get_log("performance"):  # type: ignore[no-untyped-call]
        event = json.loads(entry["message"])["message"]
        if event["method"] == "Network.requestWillBeSent":
            urls.append(event["params"]["request"]["url"])
    assert gateway.url + "/openapi.json" in urls
    assert gateway.url + "/docs/swagger-ui-bundle.js" in urls
    # (chrome:// are the browser's own new-tab page, before the test's page loads)
    outside = [u for u in urls if not u.startswith(("chrome://", "data:", gateway.url + "/"))]
    assert not outside, outside
    console = browser.get_log("browser")  # type: ignore[no-untyped-call]
    assert not [m for m in console if m["level"] == "SEVERE"], console
