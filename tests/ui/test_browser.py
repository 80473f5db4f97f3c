"""The console in a real browser: Debian's chromium driven by Selenium (apt's chromium-driver), headless,
against the proxy under real Gunicorn (2 workers) in front of the fake upstream.

One walk through, in order: pages fail closed without the login; log in; read every page; create a key
and use it; revoke it and see the proxy refuse it (401); open a slow stream and cancel it from the Live
page (the upstream's connection closed within 1 s of the click); log out. With UI_SCREENSHOTS=1 it
saves a screenshot of every page to docs/screenshots/ (off by default: a test run leaves the tree clean).
Skipped, with the reason printed,
when chromium, its driver or Selenium is missing (CI installs them).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.fakes.openai_upstream import FakeUpstream, chat_chunk, sse_reply
from tests.support import Gunicorn
from tests.ui.conftest import ADMIN

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
SHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
WAIT = 30.0
CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hello"}]}


def _missing() -> str | None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (os.path.exists(path) or shutil.which(path)):
            return f"{path} is not installed (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -r requirements-dev.txt)"
    return None


@pytest.fixture(scope="module")
def proxy(module_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gunicorn]:
    db = tmp_path_factory.mktemp("ui") / "keys.db"
    g = Gunicorn(
        {
            "TARGET_BASE_URL": module_upstream.base_url,
            "ADMIN_TOKEN": ADMIN,
            "VIRTUAL_KEYS": "true",
            "DATABASE_URL": f"sqlite:///{db}",
            "USAGE_FLUSH_SECONDS": "0.2",
            "REQUEST_TIMEOUT_SECONDS": "30",
        },
        workers=2,
    )
    yield g
    g.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    reason = _missing()
    if reason:
        print(f"\nSKIP browser tests: {reason}")
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1360,1000",
        "--force-device-scale-factor=1",
        "--lang=en-US",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT)
    yield driver
    driver.quit()


def _until(driver: Any, condition: Any, timeout: float = WAIT) -> Any:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # The pages redraw their tables on every refresh: an element found a moment ago may be gone.
    ignored = (NoSuchElementException, StaleElementReferenceException)
    return WebDriverWait(driver, timeout, poll_frequency=0.1, ignored_exceptions=ignored).until(condition)


def _css(driver: Any, selector: str) -> Any:
    from selenium.webdriver.common.by import By

    return _until(driver, lambda d: d.find_element(By.CSS_SELECTOR, selector))


def _click(driver: Any, selector: str) -> None:
    """Click what `selector` finds, again if a redraw replaced it in between."""
    from selenium.webdriver.common.by import By

    _until(driver, lambda d: d.find_element(By.CSS_SELECTOR, selector).click() or True)


def _text(driver: Any, selector: str) -> str:
    from selenium.webdriver.common.by import By

    return _until(driver, lambda d: d.find_element(By.CSS_SELECTOR, selector).text or None)


def _text_in(selector: str, text: str) -> Any:
    from selenium.webdriver.common.by import By

    def check(d: Any) -> bool:
        els = d.find_elements(By.CSS_SELECTOR, selector)
        return bool(els) and text in els[0].text

    return check


def _shot(driver: Any, name: str) -> None:
    if os.environ.get("UI_SCREENSHOTS", "0") != "1":
        return
    SHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SHOTS / f"{name}.png"))


def _admin_api(proxy: Gunicorn, method: str, path: str, body: Any = None) -> requests.Response:
    return requests.request(
        method, proxy.url + "/ui/api/" + path, json=body, timeout=10, headers={"Authorization": f"Bearer {ADMIN}"}
    )


def _chat(proxy: Gunicorn, key: str) -> int:
    return requests.post(
        proxy.url + "/v1/chat/completions", json=CHAT, timeout=10, headers={"Authorization": f"Bearer {key}"}
    ).status_code


def _poll(check: Any, timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)  # polling a condition with a deadline
    return check()


def test_pages_fail_closed_without_the_login(proxy: Gunicorn, browser: Any) -> None:
    for page in ("/ui/", "/ui/backends", "/ui/keys", "/ui/live", "/ui/config"):
        browser.get(proxy.url + page)
        _until(browser, lambda d: "/ui/login" in d.current_url)
        assert "Log in" in _css(browser, "h1").text
    for path in ("/ui/api/overview", "/ui/api/keys", "/ui/api/live", "/ui/api/config", "/ui/api/backends"):
        for cookies in ({}, {"cot_ui_session": "v1.1700000000.abc.0123"}):
            r = requests.get(proxy.url + path, cookies=cookies, timeout=10)
            assert r.status_code == 401 and r.json()["error"]["code"] == "login_required", path
    r = requests.post(proxy.url + "/ui/api/keys", json={"name": "x"}, timeout=10)
    assert r.status_code == 401
    _shot(browser, "login")
    # A wrong token: the form again, with a message, and no session.
    browser.find_element("id", "token").send_keys("not-the-admin-token-000")
    browser.find_element("id", "login-submit").click()
    assert "not the ADMIN_TOKEN" in _css(browser, "#login-error").text
    assert browser.get_cookie("cot_ui_session") is None


def test_walk_through(proxy: Gunicorn, browser: Any, module_upstream: FakeUpstream) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    # Some traffic first, so the pages have something to show.
    traffic = _admin_api(proxy, "POST", "keys", {"name": "traffic", "models": "fake-*"}).json()["key"]
    assert all(_chat(proxy, traffic) == 200 for _ in range(12))

    browser.get(proxy.url + "/ui/login")
    browser.find_element(By.ID, "token").send_keys(ADMIN)
    browser.find_element(By.ID, "login-submit").click()
    _until(browser, _text_in("h1", "Overview"))
    cookie = browser.get_cookie("cot_ui_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and ADMIN not in cookie["value"]
    _until(browser, _text_in("#tile-total", "1"))
    assert browser.find_element(By.TAG_NAME, "html").get_attribute("lang") == "en"

    # Keyboard: the skip link is the first stop and moves focus to main.
    body = browser.find_element(By.TAG_NAME, "body")
    body.send_keys("\ue004")  # Tab
    assert browser.switch_to.active_element.get_attribute("class") == "skip"

    # Backends: the fake upstream, up, with latency.
    browser.get(proxy.url + "/ui/backends")
    _until(browser, _text_in("#backends-summary", "worker"))
    _until(browser, _text_in("#providers", str(module_upstream.port)))
    assert "up" in _css(browser, "#providers td.ok").text

    # Keys: create one in the form; the key shows once; it works; revoke it; the proxy refuses it.
    browser.get(proxy.url + "/ui/keys")
    _css(browser, "#keys-table tbody tr")
    browser.find_element(By.ID, "k-name").send_keys("browser-key")
    browser.find_element(By.ID, "k-rpm").send_keys("600")
    browser.find_element(By.ID, "create-submit").click()
    secret = _until(browser, lambda d: d.find_element(By.ID, "new-key-value").get_attribute("value"))
    assert secret.startswith("sk-cp-")
    assert _chat(proxy, secret) == 200
    _shot(browser, "keys")
    _until(browser, _text_in("#keys-table tbody tr:last-child", "browser-key"))
    assert "active" in _text(browser, "#keys-table tbody tr:last-child")
    assert secret not in browser.page_source.replace(secret, "", 1)  # once, in the read-only field only
    _click(browser, "#keys-table tbody tr:last-child button[data-revoke]")
    _until(browser, ec.alert_is_present()).accept()
    _until(browser, _text_in("#keys-table tbody tr:last-child", "revoked"))
    assert _poll(lambda: _chat(proxy, secret) == 401, timeout=5), "the revoked key still works"
    browser.refresh()
    assert secret not in browser.page_source  # shown once: gone after a reload

    # Live: a slow stream appears; Cancel closes the upstream within 1 s.
    module_upstream.reset()
    module_upstream.enqueue(
        sse_reply([chat_chunk(role="assistant"), chat_chunk("tick ")], done=False, delay=0.1, endless=True)
    )
    got: dict[str, Any] = {}

    def stream() -> None:
        with requests.post(
            proxy.url + "/v1/chat/completions",
            json={**CHAT, "stream": True},
            stream=True,
            timeout=30,
            headers={"Authorization": f"Bearer {traffic}"},
        ) as r:
            got["status"] = r.status_code
            got["body"] = b"".join(r.iter_content(None))

    t = threading.Thread(target=stream, daemon=True)
    t.start()
    browser.get(proxy.url + "/ui/live")
    _css(browser, "#live-table button[data-cancel]")
    _until(
        browser,
        lambda d: (
            int(d.find_element(By.CSS_SELECTOR, "#live-table tbody td.num:nth-of-type(7)").text.replace(",", "") or 0)
            > 0
        ),
    )
    _shot(browser, "live")
    row_text = _text(browser, "#live-table tbody tr")
    assert "fake-model" in row_text and "traffic" in row_text
    assert not module_upstream.disconnected.is_set()
    clicked = time.monotonic()
    _click(browser, "#live-table button[data-cancel]")
    assert module_upstream.disconnected.wait(5), "the upstream connection was not closed"
    closed_after = module_upstream.disconnected_at - clicked
    print(f"\ncancel: upstream closed {closed_after * 1000:.0f} ms after the click")
    assert closed_after < 1.0
    t.join(10)
    assert got["status"] == 200
    events = [json.loads(line[6:]) for line in got["body"].decode().splitlines() if line.startswith("data: {")]
    assert events[-1]["error"]["code"] == "cancelled"
    _until(browser, lambda d: not d.find_elements(By.CSS_SELECTOR, "#live-table button[data-cancel]"))

    # Config: masked; no secret anywhere.
    browser.get(proxy.url + "/ui/config")
    _until(browser, _text_in("#config", "admin_token"))
    assert ADMIN not in browser.page_source and '"admin_token": "***"' in browser.find_element(By.ID, "config").text
    _shot(browser, "config")

    browser.get(proxy.url + "/ui/backends")
    _until(browser, _text_in("#providers", str(module_upstream.port)))
    _shot(browser, "backends")

    # Overview last: give the sampler two 10 s steps of data for the screenshot.
    assert _poll(lambda: len(_admin_api(proxy, "GET", "overview").json()["points"]) >= 3, timeout=40)
    browser.get(proxy.url + "/ui/")
    _until(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".chart canvas")) >= 5)
    _shot(browser, "overview")

    # Log out: the pages are closed again.
    browser.find_element(By.CSS_SELECTOR, ".logout button").click()
    _until(browser, lambda d: "/ui/login" in d.current_url)
    browser.get(proxy.url + "/ui/keys")
    _until(browser, lambda d: "/ui/login" in d.current_url)
