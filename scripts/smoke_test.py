"""Smoke test of a deployed gateway: health, models, one chat and one streamed chat.

    python scripts/smoke_test.py --base-url https://<app>.azurewebsites.net/api \\
        --function-key "$(az functionapp keys list -g <rg> -n <app> --query functionKeys.default -o tsv)" \\
        --model llama-chat

Every option also reads an environment variable: GATEWAY_URL, GATEWAY_FUNCTION_KEY, GATEWAY_MODEL,
GATEWAY_BEARER_TOKEN (Easy Auth). Without --model, the first model of /v1/models is used.

Checks, in order (exit status 0 only if all pass; the key and token are never printed):
 1. GET  /health answers 200 {"status": "ok"} without any credential (anonymous route);
 2. POST /v1/chat/completions without the function key is refused with 401 (skip: --no-auth-check,
    e.g. against the local server, which checks no caller);
 3. GET  /v1/models lists the model;
 4. POST /v1/chat/completions answers a chat.completion with a non-empty message and x-request-id;
 5. the same with "stream": true answers text/event-stream: chat.completion.chunk events with
    content, ending in `data: [DONE]` (Flex Consumption + HTTP streams, end to end).

A development tool: needs `requests` (pip install requests), imported only when run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

PROMPT = "Reply with one short sentence: what is 2 + 2?"


class SmokeFailure(Exception):
    """One check failed; the message says what was expected and what came back."""


def normalize_base_url(url: str) -> str:
    """`https://app.azurewebsites.net`, `.../api` and `.../api/` all mean `.../api`."""
    url = url.strip().rstrip("/")
    if not url.startswith(("https://", "http://")):
        raise SmokeFailure(f"--base-url must start with https:// (got {url!r})")
    return url if url.endswith("/api") else f"{url}/api"


def _describe(response: Any) -> str:
    body = response.text[:300].replace("\n", " ")
    return f"HTTP {response.status_code} {response.headers.get('content-type', '')}: {body}"


def iter_sse_data(lines: Iterator[str]) -> Iterator[str]:
    """The `data:` payloads of a server-sent event stream (comments and other fields skipped)."""
    buffer: list[str] = []
    for line in lines:
        if line == "":
            if buffer:
                yield "\n".join(buffer)
                buffer = []
        elif line.startswith("data:"):
            buffer.append(line[5:].lstrip(" "))
    if buffer:
        yield "\n".join(buffer)


class Smoke:
    def __init__(
        self,
        base_url: str,
        function_key: str | None,
        bearer_token: str | None = None,
        timeout: float = 120.0,
        out: Callable[[str], None] = print,
    ) -> None:
        import requests  # a dev tool: imported only when a smoke test runs

        self.requests = requests
        self.base = normalize_base_url(base_url)
        self.timeout = timeout
        self.out = out
        self.credentials: dict[str, str] = {}
        if function_key:
            self.credentials["x-functions-key"] = function_key
        if bearer_token:
            self.credentials["Authorization"] = f"Bearer {bearer_token}"
        self.session = requests.Session()

    def _headers(self, authenticated: bool = True) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "x-request-id": f"smoke-{uuid.uuid4().hex[:12]}"}
        return {**headers, **self.credentials} if authenticated else headers

    def health(self) -> None:
        response = self.session.get(f"{self.base}/health", timeout=self.timeout)
        if response.status_code != 200 or response.json() != {"status": "ok"}:
            raise SmokeFailure(f"GET /health: expected 200 {{'status': 'ok'}}, got {_describe(response)}")
        self.out("ok   GET /health (anonymous)")

    def refuses_anonymous_chat(self) -> None:
        response = self.session.post(
            f"{self.base}/v1/chat/completions",
            headers=self._headers(authenticated=False),
            data=json.dumps({"messages": [{"role": "user", "content": PROMPT}]}),
            timeout=self.timeout,
        )
        if response.status_code != 401:
            raise SmokeFailure(
                f"POST /v1/chat/completions without credentials: expected 401, got {_describe(response)}"
            )
        self.out("ok   POST /v1/chat/completions without a key is refused (401)")

    def models(self) -> list[str]:
        response = self.session.get(f"{self.base}/v1/models", headers=self._headers(), timeout=self.timeout)
        if response.status_code != 200:
            raise SmokeFailure(f"GET /v1/models: expected 200, got {_describe(response)}")
        names = [model["id"] for model in response.json().get("data", [])]
        if not names:
            raise SmokeFailure("GET /v1/models: no model configured (check GATEWAY_CONFIG)")
        self.out(f"ok   GET /v1/models: {', '.join(names)}")
        return names

    def chat(self, model: str) -> str:
        started = time.monotonic()
        response = self.session.post(
            f"{self.base}/v1/chat/completions",
            headers=self._headers(),
            data=json.dumps(
                {"model": model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 32}
            ),
            timeout=self.timeout,
        )
        if response.status_code != 200:
            raise SmokeFailure(
                f"POST /v1/chat/completions ({model}): expected 200, got {_describe(response)}"
            )
        if not response.headers.get("x-request-id"):
            raise SmokeFailure("POST /v1/chat/completions: no x-request-id header")
        body = response.json()
        content = (body.get("choices") or [{}])[0].get("message", {}).get("content")
        if body.get("object") != "chat.completion" or not isinstance(content, str) or not content.strip():
            raise SmokeFailure(
                f"POST /v1/chat/completions ({model}): not a chat.completion with text: {body}"
            )
        self.out(f"ok   chat ({model}, {time.monotonic() - started:.2f} s): {content.strip()[:80]!r}")
        return content

    def stream(self, model: str) -> str:
        started = time.monotonic()
        payload = {
            "model": model,
            "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": 32,
            "stream": True,
        }
        with self.session.post(
            f"{self.base}/v1/chat/completions",
            headers={**self._headers(), "Accept": "text/event-stream"},
            data=json.dumps(payload),
            timeout=self.timeout,
            stream=True,
        ) as response:
            if response.status_code != 200:
                raise SmokeFailure(f"streamed chat ({model}): expected 200, got {_describe(response)}")
            if not response.headers.get("content-type", "").startswith("text/event-stream"):
                raise SmokeFailure(f"streamed chat ({model}): not an event stream: {_describe(response)}")
            parts: list[str] = []
            first_chunk_at = None
            done = False
            for data in iter_sse_data(response.iter_lines(decode_unicode=True)):
                if data.strip() == "[DONE]":
                    done = True
                    break
                event = json.loads(data)
                if "error" in event:
                    raise SmokeFailure(f"streamed chat ({model}): error event {event['error']}")
                if event.get("object") != "chat.completion.chunk":
                    raise SmokeFailure(f"streamed chat ({model}): unexpected event {event}")
                for choice in event.get("choices", []):
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        first_chunk_at = first_chunk_at or time.monotonic()
                        parts.append(text)
        if not done:
            raise SmokeFailure(f"streamed chat ({model}): the stream ended without data: [DONE]")
        content = "".join(parts)
        if not content.strip() or first_chunk_at is None:
            raise SmokeFailure(f"streamed chat ({model}): no content in the stream")
        self.out(
            f"ok   streamed chat ({model}, first text after {first_chunk_at - started:.2f} s, "
            f"{len(parts)} chunks): {content.strip()[:80]!r}"
        )
        return content


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--base-url",
        default=os.environ.get("GATEWAY_URL"),
        help="the gateway's base URL, https://<app>.azurewebsites.net/api (env GATEWAY_URL)",
    )
    parser.add_argument(
        "--function-key",
        default=os.environ.get("GATEWAY_FUNCTION_KEY"),
        help="a function key, sent as x-functions-key (env GATEWAY_FUNCTION_KEY)",
    )
    parser.add_argument(
        "--model",
        default=os.environ.get("GATEWAY_MODEL"),
        help="the endpoint name to chat with (env GATEWAY_MODEL; default: the first listed)",
    )
    parser.add_argument(
        "--bearer-token",
        default=os.environ.get("GATEWAY_BEARER_TOKEN"),
        help="an Entra ID access token when Easy Auth is on (env GATEWAY_BEARER_TOKEN)",
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request (default 120)")
    parser.add_argument(
        "--no-auth-check",
        action="store_true",
        help="skip the 401 check for a call without credentials (local server)",
    )
    args = parser.parse_args(argv)
    if not args.base_url:
        parser.error("--base-url (or GATEWAY_URL) is required")
    if not (args.function_key or args.bearer_token or args.no_auth_check):
        parser.error("--function-key (or GATEWAY_FUNCTION_KEY) is required; see `az functionapp keys list`")
    return args


def main(argv: list[str] | None = None, out: Callable[[str], None] = print) -> int:
    args = parse_args(argv)
    try:
        smoke = Smoke(args.base_url, args.function_key, args.bearer_token, args.timeout, out)
    except ImportError:
        out("smoke_test: needs the requests package: pip install requests")
        return 2
    except SmokeFailure as failure:
        out(f"FAIL {failure}")
        return 1
    out(f"smoke test of {smoke.base}")
    try:
        smoke.health()
        if not args.no_auth_check:
            smoke.refuses_anonymous_chat()
        names = smoke.models()
        model = args.model or names[0]
        if model not in names:
            raise SmokeFailure(f"model {model!r} is not configured; the gateway lists {names}")
        smoke.chat(model)
        smoke.stream(model)
    except SmokeFailure as failure:
        out(f"FAIL {failure}")
        return 1
    except smoke.requests.RequestException as error:
        out(f"FAIL {type(error).__name__}: {error}")
        return 1
    except ValueError as error:  # a body that is not the JSON the API promises
        out(f"FAIL unreadable answer: {error}")
        return 1
    out("smoke test passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
