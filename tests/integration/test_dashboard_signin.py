"""The dashboard with tokens configured, in a real headless Chromium
(selenium + Debian's chromedriver): a sign-in page instead of a 401 body,
the token kept in an HttpOnly SameSite cookie (never in a URL), the
dashboard after signing in, a wrong token refused, and signing out."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from tests.conftest import unavailable
from tests.live import served
from warmcache.config import AuthConfig, TokenConfig
from warmcache.service import WarmCache
from warmcache.web import create_app
from warmcache.web.auth import Authenticator

TOKEN = "dashboard-viewer-token"


@pytest.fixture
def url(service: WarmCache) -> Iterator[str]:
    service.rules.put("az1", "small", {"max_instance_per_cycle": 3, "total_instances": 3})
    service.run_cycle()
    auth = Authenticator(
        AuthConfig(tokens=(TokenConfig(name="viewer", role="user", token=SecretStr(TOKEN)),))
    )
    with served(create_app(service, auth)) as url:
        yield url


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        unavailable(
            "browser", "no chromium or chromedriver (apt-get install chromium chromium-driver)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        options.add_argument(flag)
    # The local driver by path: selenium never downloads one.
    chrome = webdriver.Chrome(service=Service(executable_path=driver), options=options)
    chrome.set_page_load_timeout(30)
    yield chrome
    chrome.quit()  # ends chromedriver and the browser it started


def test_a_browser_signs_in_with_a_token_and_sees_the_dashboard(url: str, browser) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as until
    from selenium.webdriver.support.wait import WebDriverWait

    def lands_on(path: str) -> None:  # a click returns before its navigation ends
        WebDriverWait(browser, 10).until(until.url_to_be(f"{url}{path}"))

    # without a token: the sign-in page, not a JSON 401
    assert httpx.get(f"{url}/", follow_redirects=True).status_code == 200
    browser.get(f"{url}/")
    assert browser.current_url == f"{url}/signin"
    assert "Sign in" in browser.page_source and '"unauthorized"' not in browser.page_source

    # a wrong token is refused, and the page says so
    browser.find_element(By.ID, "token").send_keys("not-a-token")
    browser.find_element(By.ID, "signin").click()
    error = WebDriverWait(browser, 10).until(until.presence_of_element_located((By.ID, "error")))
    assert error.text == "unknown token"
    assert browser.get_cookie("warmcache_session") is None

    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "signin").click()
    lands_on("/")
    assert browser.find_element(By.TAG_NAME, "h1").text == "warmcache"
    assert browser.find_element(By.ID, "identity").text == "viewer"
    assert 'data-pool="az1/small"' in browser.page_source
    cookie = browser.get_cookie("warmcache_session")
    assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert TOKEN not in browser.current_url
    # the cookie is the dashboard's only: the API still wants the bearer header
    assert browser.execute_script("return document.cookie") == ""  # HttpOnly: JS cannot read it
    assert httpx.get(f"{url}/v1/pools", cookies={"warmcache_session": TOKEN}).status_code == 401

    browser.find_element(By.ID, "signout").click()
    lands_on("/signin")
    browser.get(f"{url}/")
    assert browser.current_url == f"{url}/signin"
