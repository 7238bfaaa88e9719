"""The dashboard at /ui in a real headless browser (Debian's chromium through chromedriver):
sign in with a key, watch a running batch's progress change, see its cost, open its output;
another key does not see it; the master key sees every key's and team's usage and spend over
time, and where each finished batch ran; the key never appears in a URL."""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select

from gateway.testing.servers import ServerThread
from tests.conftest import GROUP, MASTER_KEY, Upstream

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1360,900"]
# Where to save the README's screenshots: `DASHBOARD_SCREENSHOTS=docs pytest ...`
SCREENSHOTS = os.environ.get("DASHBOARD_SCREENSHOTS")

if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
    pytest.fail("chromium and chromium-driver are needed (make install, or "
                "apt-get install chromium chromium-driver)", pytrace=False)


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite only: the dashboard is a client of the HTTP API, which the storage tests cover."""
    return f"sqlite:///{tmp_path / 'gateway.db'}"


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    # Every request the page makes, with its URL, from the DevTools network events.
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(0)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


class Page:
    """The dashboard in the browser, with the waits the tests need."""

    def __init__(self, driver: webdriver.Chrome, gateway: ServerThread) -> None:
        self.driver = driver
        self.url = gateway.url + "/ui/"
        self.requests: list[dict[str, Any]] = []
        self.console: list[str] = []
        driver.get("about:blank")
        self.drain()

    def open(self, key: str) -> None:
        self.driver.get(self.url)
        # Quick refreshes for the test (the page's default is 3 s while batches run).
        self.driver.execute_script("sessionStorage.setItem('gateway.refreshMs', '250')")
        self.wait(lambda: self.find("#login").is_displayed())
        self.find("#key").send_keys(key)
        self.find("#login button[type=submit]").click()
        self.wait(lambda: self.find("#app").is_displayed())

    def find(self, css: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def all(self, css: str) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def wait(self, check: Callable[[], Any], timeout: float = 15) -> Any:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                value = check()
                if value:
                    return value
            except (StaleElementReferenceException, LookupError) as e:
                last = e
            except Exception as e:  # not rendered yet
                last = e
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting (last error: {last!r}); page text:\n"
                             + self.find("body").text)

    def row(self, batch_id: str) -> dict[str, str]:
        """The batch's row as shown. The page re-renders the table on every refresh (250 ms
        here): a row replaced while it was being read is read again."""
        for _ in range(20):
            try:
                return self._row(batch_id)
            except StaleElementReferenceException:
                time.sleep(0.02)
        return self._row(batch_id)

    def _row(self, batch_id: str) -> dict[str, str]:
        rows = self.all(f'#batches tr[data-id="{batch_id}"]')
        if not rows:
            raise LookupError(batch_id)
        progress = rows[0].find_element(By.CSS_SELECTOR, ".progress")
        return {"status": rows[0].get_attribute("data-status") or "",
                "progress": rows[0].find_element(By.CSS_SELECTOR, ".progress-text").text,
                "completed": progress.get_attribute("data-completed") or ""}

    def labels(self, chart: str, attribute: str = "data-label",
               value: str = "data-value") -> dict[str, float]:
        """A chart's bars (or series) and their values."""
        return {g.get_attribute(attribute) or "": float(g.get_attribute(value) or 0)
                for g in self.all(f'svg[data-chart="{chart}"] g[{attribute}]')}

    def drain(self) -> None:
        for entry in self.driver.get_log("performance"):  # type: ignore[no-untyped-call]
            event = json.loads(entry["message"])["message"]
            if event["method"] == "Network.requestWillBeSent":
                self.requests.append(event["params"])
        self.console += [e["message"] for e in
                         self.driver.get_log("browser")]  # type: ignore[no-untyped-call]

    def assert_key_private(self, key: str) -> None:
        """Never in a URL the browser asked for (or its address bar, or the console), never in
        localStorage; sent as a Bearer header on the API calls."""
        self.drain()
        urls = [r["request"]["url"] for r in self.requests]
        urls += [r.get("documentURL", "") for r in self.requests]
        assert urls and not [u for u in urls if key in u]
        assert key not in self.driver.current_url
        assert not [m for m in self.console if key in m]
        # No script error and no Content-Security-Policy violation: only the API's answers
        # (the 403 that tells a virtual key from the master key, a 404 for a stranger's batch).
        assert all("Failed to load resource" in m for m in self.console), self.console
        api_calls = [r for r in self.requests if "/v1/batches" in r["request"]["url"]]
        assert api_calls
        wrong = [(r["request"]["method"], r["request"]["url"], r["request"]["headers"])
                 for r in api_calls
                 if r["request"]["headers"].get("Authorization") != f"Bearer {key}"]
        assert not wrong, wrong
        assert self.driver.execute_script("return JSON.stringify(localStorage)") == "{}"


def jsonl(n: int, fail: tuple[int, ...] = ()) -> bytes:
    lines = []
    for i in range(n):
        body: dict[str, Any] = {"model": GROUP,
                                "messages": [{"role": "user", "content": f"Hello {i}"}]}
        if i in fail:
            body["metadata"] = {"fake_fail": "true"}
        lines.append(json.dumps({"custom_id": f"req-{i}", "method": "POST",
                                 "url": "/v1/chat/completions", "body": body}))
    return ("\n".join(lines) + "\n").encode()


def submit(client: openai.OpenAI, n: int = 3, fail: tuple[int, ...] = ()) -> str:
    file = client.files.create(file=("in.jsonl", io.BytesIO(jsonl(n, fail))), purpose="batch",
                               extra_body={"target_model_names": GROUP})
    batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions",
                                  completion_window="24h", metadata={"project": "dashboard"})
    return batch.id


def upstream_batch(upstreams: list[Upstream], known: set[str]) -> tuple[Upstream, str]:
    """The upstream batch created last (not in `known`)."""
    [(up, bid)] = [(up, b) for up in upstreams for b in up.fake.batches if b not in known]
    known.add(bid)
    return up, bid


def run_to_end(client: openai.OpenAI, batch_id: str) -> None:
    for _ in range(20):
        if client.batches.retrieve(batch_id).status == "completed":
            return
    raise AssertionError(f"{batch_id} did not complete")


def test_virtual_key_watches_progress_and_opens_output(
    gateway: ServerThread, upstreams: list[Upstream], make_key: Callable[..., str],
    client_for: Callable[[str], openai.OpenAI], browser: webdriver.Chrome,
) -> None:
    for up in upstreams:
        up.fake.auto_advance = False  # the test moves batches on, between checks
    key = make_key([GROUP], key_alias="team-a")
    client = client_for(key)
    known: set[str] = set()
    done_id = submit(client, 3, fail=(2,))
    up_done, upstream_done = upstream_batch(upstreams, known)
    running_id = submit(client, 4)
    up_running, upstream_running = upstream_batch(upstreams, known)

    page = Page(browser, gateway)
    page.open(key)
    assert page.find("#who").text == "Signed in: team-a"
    assert page.find("#notice").is_displayed() is False
    page.wait(lambda: page.row(done_id)["status"] == "validating")
    assert page.row(done_id)["progress"] == "0 / 3"

    # The page polls by itself: each move upstream shows up without a reload.
    up_done.fake.advance(upstream_done)
    page.wait(lambda: page.row(done_id)["status"] == "in_progress")
    up_running.fake.advance(upstream_running)
    up_running.fake.batches[upstream_running]["request_counts"]["completed"] = 1
    page.wait(lambda: page.row(running_id)["progress"] == "1 / 4")
    bar = page.find(f'#batches tr[data-id="{running_id}"] .bar .ok')
    assert 0 < bar.size["width"] < page.find(f'#batches tr[data-id="{running_id}"] .bar')\
        .size["width"]
    up_running.fake.batches[upstream_running]["request_counts"]["completed"] = 3
    page.wait(lambda: page.row(running_id)["progress"] == "3 / 4")
    up_done.fake.complete(upstream_done)
    page.wait(lambda: page.row(done_id)["status"] == "completed")
    assert page.row(done_id)["progress"] == "3 / 3 (1 failed)"
    assert page.row(running_id)["status"] == "in_progress"
    # Its cost, from /spend/logs (the fake's model is in the bundled price table).
    def cost_of(batch_id: str) -> tuple[str, float]:
        cell = page.find(f'#batches tr[data-id="{batch_id}"] .cost-cell')  # re-drawn often
        spans = cell.find_elements(By.CSS_SELECTOR, ".cost")
        return cell.text, float(spans[0].get_attribute("data-spend") or 0) if spans else 0.0

    price, spent = page.wait(lambda: cost_of(done_id) if cost_of(done_id)[1] else None)
    assert price.startswith("$") and spent > 0
    assert page.wait(lambda: cost_of(running_id)) == ("\u2013", 0.0)
    if SCREENSHOTS:
        browser.save_screenshot(str(Path(SCREENSHOTS) / "dashboard-batches.png"))

    # The batch's detail: its request errors, and its output opened in the page.
    # Rows are re-drawn every refresh: a click that lands on a replaced one is tried again.
    page.wait(lambda: page.find(f'#batches tr[data-id="{done_id}"] a.id').click() or True)
    page.wait(lambda: page.find("#view-batch").is_displayed()
              and page.find("dl.detail").get_attribute("data-status") == "completed")
    assert done_id in browser.current_url  # the hash names the batch; no key in it
    errors = page.wait(lambda: page.all("#request-errors tbody tr"))
    assert len(errors) == 1 and errors[0].text.startswith("req-2 400")
    detail = page.find("#batch-detail").text
    assert "project=dashboard" in detail and GROUP in detail and price in detail
    assert not page.all("#ran-on") and "Ran on" not in detail  # deployments: the master's
    output_button = page.all("#batch-detail span.file .view")[1]  # input, output, errors
    output_button.click()
    page.wait(lambda: "echo:req-0" in page.find("#viewer-body").text)
    output = [json.loads(line) for line in page.find("#viewer-body").text.splitlines()]
    assert sorted(o["custom_id"] for o in output) == ["req-0", "req-1"]
    assert page.find("#viewer-title").text == f"Output of {done_id}"

    # Downloads go through fetch + Blob: the link the browser follows is a blob: URL.
    browser.execute_script(
        "window.__clicked = [];"
        "HTMLAnchorElement.prototype.click = function () { window.__clicked.push(this.href); };")
    page.all("#batch-detail span.file .download")[1].click()
    clicked = page.wait(lambda: browser.execute_script("return window.__clicked"))
    assert clicked[0].startswith("blob:")

    # Files and usage views.
    browser.get(gateway.url + "/ui/#files")
    page.wait(lambda: len(page.all("#files tr")) >= 3)
    page.find('a[data-view="usage"]').click()
    page.wait(lambda: page.all('svg[data-chart="tokens-by-key"] g[data-label="team-a"]'))
    # Its own spend over time, and nobody else's; no deployment column for a tenant.
    series = page.labels("spend-over-time", "data-series", "data-total")
    assert list(series) == ["team-a"] and series["team-a"] > 0
    assert [r.get_attribute("data-id") for r in page.all("#usage tr")] == [done_id]
    assert "Deployment" not in page.find("#usage-head").text
    page.assert_key_private(key)


def test_another_key_does_not_see_the_batch(
    gateway: ServerThread, make_key: Callable[..., str],
    client_for: Callable[[str], openai.OpenAI], browser: webdriver.Chrome,
) -> None:
    first = submit(client_for(make_key([GROUP], key_alias="team-a")))
    other = make_key([GROUP], key_alias="team-b")
    page = Page(browser, gateway)
    page.open(other)
    page.wait(lambda: page.find("#batches-empty").is_displayed())
    assert first not in page.find("body").text
    # Not by its address either: the API answers 404 for another key's batch.
    browser.execute_script(f"location.hash = 'batch/{first}'")
    missing = page.wait(lambda: page.find("#batch-missing"))
    assert missing.text == f"No such Batch object: {first}"
    page.find('a[data-view="files"]').click()
    page.wait(lambda: page.find("#files-empty").is_displayed())
    page.find('a[data-view="usage"]').click()
    page.wait(lambda: page.find("#usage-empty").is_displayed())
    page.assert_key_private(other)
    # Signing out forgets the key.
    page.find("#logout").click()
    assert page.find("#login").is_displayed()
    assert browser.execute_script("return sessionStorage.getItem('gateway.key')") is None


def test_master_key_sees_usage_and_spend_of_every_key_and_team(
    gateway: ServerThread, admin: httpx.Client, make_key: Callable[..., str],
    client_for: Callable[[str], openai.OpenAI], browser: webdriver.Chrome,
) -> None:
    for team_id, alias in (("research", "Research"), ("ops", None)):
        assert admin.post("/team/new", json={"team_id": team_id,
                                             "team_alias": alias}).status_code == 200
    a = client_for(make_key([GROUP], key_alias="team-a", team_id="research"))
    b = client_for(make_key([GROUP], key_alias="team-b", team_id="ops"))
    first = submit(a, 3)
    run_to_end(a, first)
    run_to_end(b, submit(b, 5, fail=(0,)))
    ran_on = {u["batch_id"]: u["deployment_id"] for u in admin.get("/usage").json()["data"]}

    page = Page(browser, gateway)
    page.open(MASTER_KEY)
    notice = page.find("#notice")
    assert notice.is_displayed() and "covers every key, user and team" in notice.text
    page.find('a[data-view="usage"]').click()
    page.wait(lambda: page.all('svg[data-chart="requests-by-key"] g[data-label]'))
    assert page.labels("requests-by-key") == {"team-a": 3, "team-b": 5}
    tokens = page.labels("tokens-by-key")
    assert set(tokens) == {"team-a", "team-b"} and all(v > 0 for v in tokens.values())
    spend = page.labels("spend-by-key")
    assert set(spend) == {"team-a", "team-b"} and all(v > 0 for v in spend.values())
    over_time = page.labels("spend-over-time", "data-series", "data-total")
    assert over_time == pytest.approx(spend)
    # Every finished batch, with the deployment that ran it (the master key's only).
    rows = {r.get_attribute("data-id"): r.find_element(By.CSS_SELECTOR, ".deployment").text
            for r in page.all("#usage tr")}
    assert rows == ran_on and len(rows) == 2

    # Per model group, and per team (the teams' aliases where they have one).
    Select(page.find("#dimension")).select_by_value("group")
    page.wait(lambda: page.all('svg[data-chart="requests-by-group"] g[data-label]'))
    assert page.labels("requests-by-group") == {GROUP: 8}
    Select(page.find("#dimension")).select_by_value("team")
    page.wait(lambda: page.all('svg[data-chart="spend-by-team"] g[data-label]'))
    assert set(page.labels("spend-by-team")) == {"Research", "ops"}
    assert set(page.labels("tokens-over-time", "data-series", "data-total")) == {
        "Research", "ops"}
    if SCREENSHOTS:
        browser.save_screenshot(str(Path(SCREENSHOTS) / "dashboard-usage.png"))

    # Another key's batch: the master key reads any tenant's, with the deployment it ran on.
    page.wait(lambda: page.find(f'#usage tr[data-id="{first}"] a.id').click() or True)
    ran = page.wait(lambda: page.find("#ran-on"))
    assert ran.text == f"{GROUP} · deployment {ran_on[first]}"
    assert first in page.find("body").text and "$" in page.find("body").text
    page.assert_key_private(MASTER_KEY)


def test_master_key_sees_where_its_own_batch_ran(
    gateway: ServerThread, browser: webdriver.Chrome, admin: httpx.Client,
) -> None:
    master = openai.OpenAI(base_url=gateway.url + "/v1", api_key=MASTER_KEY, max_retries=0)
    batch_id = submit(master, 2)
    run_to_end(master, batch_id)
    (usage,) = [u for u in admin.get("/usage").json()["data"] if u["batch_id"] == batch_id]
    page = Page(browser, gateway)
    page.open(MASTER_KEY)
    browser.execute_script(f"location.hash = 'batch/{batch_id}'")
    ran_on = page.wait(lambda: page.find("#ran-on"))
    assert ran_on.text == f"{GROUP} · deployment {usage['deployment_id']}"
    # The input's copies: one per deployment of the group (the master's file view).
    copies = page.wait(lambda: page.all("#input-copies .copy"))
    assert len(copies) == 2 and usage["deployment_id"] in " ".join(c.text for c in copies)
    page.assert_key_private(MASTER_KEY)


def test_assets_are_served_offline_with_a_strict_policy(gateway: ServerThread) -> None:
    with httpx.Client(base_url=gateway.url) as http:
        r = http.get("/ui")
        assert r.status_code == 308 and r.headers["location"] == "ui/"
        page = http.get("/ui/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["referrer-policy"] == "no-referrer"
        assert "http" not in page.text.replace("http://www.w3.org", "")  # nothing from elsewhere
        for name, kind in (("app.js", "text/javascript"), ("app.css", "text/css")):
            r = http.get(f"/ui/{name}")
            assert r.status_code == 200 and r.headers["content-type"].startswith(kind)
            assert "https://" not in r.text
        r = http.get("/ui/../config.yaml")
        assert r.status_code == 404
        assert http.get("/ui/secrets.txt").json()["error"]["code"] == "not_found"


def test_a_wrong_key_is_refused_and_not_kept(
    gateway: ServerThread, browser: webdriver.Chrome,
) -> None:
    page = Page(browser, gateway)
    browser.get(page.url)
    page.wait(lambda: page.find("#login").is_displayed())
    page.find("#key").send_keys("sk-wrong")
    page.find("#login button[type=submit]").click()
    error = page.wait(lambda: page.find("#login-error").text)
    assert error == "Invalid, deleted or expired API key."
    assert browser.execute_script("return sessionStorage.getItem('gateway.key')") is None
    assert "sk-wrong" not in browser.current_url
