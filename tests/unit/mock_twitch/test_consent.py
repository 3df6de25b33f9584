"""proxy.mock_twitch.consent: the consent page shown when the mock does not auto-approve."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest

from proxy.mock_twitch import create_mock_app
from tests.unit.mock_twitch.twitch_calls import SCOPES, authorize, callback_query, exchange

# -- consent page (auto_approve=False) ------------------------------------------


class FormFields(HTMLParser):
    """Collects the hidden inputs and the submit buttons of the consent form."""

    def __init__(self):
        super().__init__()
        self.hidden, self.buttons, self.action = {}, {}, None
        self._button = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form":
            self.action = (attrs["method"], attrs["action"])
        elif tag == "input" and attrs.get("type") == "hidden":
            self.hidden[attrs["name"]] = attrs["value"]
        elif tag == "button":
            self._button = attrs

    def handle_data(self, data):
        if self._button is not None and data.strip():
            self.buttons[data.strip()] = (self._button["name"], self._button["value"])
            self._button = None


@pytest.fixture
async def consent_client(aiohttp_client):
    return await aiohttp_client(create_mock_app(auto_approve=False))


async def consent_form(consent_client):
    response = await authorize(consent_client)
    assert response.status == 200
    assert response.content_type == "text/html"
    assert response.headers["Content-Security-Policy"].startswith("default-src 'none'")
    page = await response.text()
    assert "<script" not in page and "src=" not in page and "<link" not in page
    assert '<html lang="en">' in page
    assert "Mock Widget App" in page and "TwitchDev" in page
    assert all(f"<code>{scope}</code>" in page for scope in SCOPES)
    form = FormFields()
    form.feed(page)
    assert form.action == ("post", "/oauth2/authorize")
    return form


@pytest.mark.parametrize("button", ["Authorize", "Cancel"])
async def test_consent_page_buttons(consent_client, button):
    form = await consent_form(consent_client)
    name, value = form.buttons[button]

    response = await consent_client.post(
        "/oauth2/authorize", data={**form.hidden, name: value}, allow_redirects=False
    )

    query = callback_query(response)
    assert query["state"] == "st/ate+1"
    if button == "Authorize":
        assert query["scope"] == " ".join(SCOPES)
        assert (await exchange(consent_client, query["code"]))[0] == 200
    else:
        assert query["error"] == "access_denied"
        assert "code" not in query
