"""The example chat page, in a real browser: Debian's Chromium driven by Playwright."""

from __future__ import annotations

import os
import shutil
import urllib.request

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_the_local_server_serves_the_chat_page(gateway):
    with urllib.request.urlopen(gateway + "/") as response:
        page = response.read().decode()
        assert response.headers["Content-Type"].startswith("text/html")
    assert "fetch(`${API}/chat/completions`" in page and "stream: true" in page


def test_typing_a_question_shows_the_streamed_answer(gateway, emulator):
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("CI must run the browser test: .ci/run installs Debian's chromium")
        pytest.skip("needs Debian's chromium: apt-get install chromium (.ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
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
