"""Sign-in and sign-out cannot be forged by another site (issue 28, item 7:
a page on another origin swapped a signed-in operator's identity to the
attacker's token, then signed them out)."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient
from pydantic import SecretStr

from warmcache.config import AuthConfig, TokenConfig
from warmcache.service import WarmCache
from warmcache.web import create_app
from warmcache.web.auth import Authenticator
from warmcache.web.dashboard import COOKIE, CSRF_COOKIE

TOKEN, ATTACKER = "operator-token", "attacker-token"


@pytest.fixture
def browser(service: WarmCache) -> FlaskClient:
    auth = Authenticator(
        AuthConfig(
            tokens=(
                TokenConfig(name="ops", role="admin", token=SecretStr(TOKEN)),
                TokenConfig(name="mallory", role="user", token=SecretStr(ATTACKER)),
            )
        )
    )
    return create_app(service, auth).test_client()


def form_token(client: FlaskClient) -> str:
    page = client.get("/signin").get_data(as_text=True)
    return page.split('name="csrf" value="')[1].split('"')[0]


def session(client: FlaskClient) -> str | None:
    found = client.get_cookie(COOKIE)
    return found.value if found else None


def test_a_cross_site_sign_in_is_refused_and_signs_no_one_in(browser: FlaskClient) -> None:
    token = form_token(browser)
    # another site's form: it cannot read the cookie, so it cannot send the token
    for form, headers in (
        ({"token": ATTACKER}, {}),
        ({"token": ATTACKER, "csrf": "0" * 32}, {}),
        ({"token": ATTACKER, "csrf": token}, {"Origin": "https://evil.example"}),
    ):
        reply = browser.post("/signin", data=form, headers=headers)
        assert reply.status_code == 403 and session(browser) is None
    reply = browser.post("/signin", data={"token": TOKEN, "csrf": token})
    assert reply.status_code == 303 and session(browser) == TOKEN
    assert browser.get_cookie(CSRF_COOKIE) is not None


def test_a_cross_site_sign_out_changes_nothing(browser: FlaskClient) -> None:
    token = form_token(browser)
    browser.post("/signin", data={"token": TOKEN, "csrf": token})
    browser.post("/signout", data={}, headers={"Origin": "https://evil.example"})
    browser.post("/signout", data={"csrf": token}, headers={"Origin": "https://evil.example"})
    assert session(browser) == TOKEN
    page = browser.get("/").get_data(as_text=True)
    assert f'name="csrf" value="{token}"' in page  # the page's own sign-out form
    browser.post("/signout", data={"csrf": token})
    assert session(browser) is None
