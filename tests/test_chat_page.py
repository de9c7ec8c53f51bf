"""The example chat page, in a real browser: Debian's Chromium driven by Playwright."""

from __future__ import annotations

import os
import shutil
import urllib.request

import pytest

from .conftest import emulator_config
from .entra_issuer import fake_msal, integrity

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_the_local_server_serves_the_chat_page(gateway):
    with urllib.request.urlopen(gateway + "/") as response:
        page = response.read().decode()
        assert response.headers["Content-Type"].startswith("text/html")
    assert "fetch(`${API}/chat/completions`" in page and "stream: true" in page


def chromium() -> str:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("CI must run the browser test: .ci/run installs Debian's chromium")
        pytest.skip("needs Debian's chromium: apt-get install chromium (.ci/run does)")
    return CHROMIUM


BROWSER_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def test_typing_a_question_shows_the_streamed_answer(gateway, emulator):
    executable = chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=BROWSER_ARGS)
        try:
            page = browser.new_page()
            page.goto(gateway + "/")
            page.wait_for_selector("#model option[value='mistral-large']", state="attached")
            page.select_option("#model", "mistral-large")
            page.fill("#question", "Is the stream typing?")
            page.click("#send")
            answer = page.locator(".turn.assistant").last
            answer.filter(has_text="You said: Is the stream typing?").wait_for(timeout=10_000)
            page.fill("#question", "And again")
            page.click("#send")
            page.locator(".turn.assistant").nth(1).filter(has_text="You said: And again").wait_for(
                timeout=10_000
            )
        finally:
            browser.close()
    sent = emulator[0].requests[-1].body
    assert sent["stream"] is True and [m["role"] for m in sent["messages"]] == ["user", "assistant", "user"]


def test_the_page_signs_in_with_msal_and_sends_the_token(emulator, start_gateway, tenant):
    """With `entra` callers and `page`, the page loads MSAL.js (here a stand-in, pinned by its
    hash like the real one) and chats with the token it gets: minted by the test's own keys and
    checked by the gateway against the test's tenant."""
    executable = chromium()
    tenant.msal_script = fake_msal(tenant.token())
    page_client = "99999999-8888-7777-6666-555555555555"
    callers = tenant.callers_config(required_roles=["Chat.User"])
    callers["auth"]["page"] = {
        "client_id": page_client,
        "msal_url": f"{tenant.url}/msal-browser.min.js",
        "msal_integrity": integrity(tenant.msal_script),
    }
    url = start_gateway(emulator_config(emulator[1], callers=callers))
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=BROWSER_ARGS)
        try:
            page = browser.new_page()
            page.goto(url + "/")
            page.click("#signin")
            page.wait_for_selector("#model option[value='mistral-large']", state="attached")
            assert "ada@example.com" in page.inner_text("#who")
            page.select_option("#model", "mistral-large")
            page.fill("#question", "Signed in?")
            page.click("#send")
            page.locator(".turn.assistant").last.filter(has_text="You said: Signed in?").wait_for(
                timeout=10_000
            )
            calls = page.evaluate("window.msalCalls")
        finally:
            browser.close()
    assert calls[0][:2] == ["create", page_client]
    assert ["login", ["api://gateway-test/.default"]] in calls
    assert emulator[0].requests[-1].body["messages"][-1]["content"] == "Signed in?"


def test_the_page_without_sign_in_says_so_when_the_gateway_needs_a_token(emulator, start_gateway, tenant):
    """`entra` without `page`: the page is served unchanged and the gateway refuses its calls."""
    url = start_gateway(emulator_config(emulator[1], callers=tenant.callers_config()))
    with urllib.request.urlopen(url + "/") as response:
        page = response.read().decode()
    assert '<script id="gateway-auth" type="application/json">null</script>' in page
