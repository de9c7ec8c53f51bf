"""An imitation of Azure ML online endpoints for local development, tests and benchmarks.

Both protocols the gateway talks to are served: *dedicated* managed online endpoints
(``POST .../score``) and *serverless* OpenAI-compatible ones (``POST .../v1/chat/completions``,
optionally streamed; also at Azure AI Foundry's ``POST .../models/chat/completions``).
Answers are deterministic echoes (see :func:`reply_text`), or, when a serverless request
offers ``tools``, a deterministic call of one of them with arguments valid against its
parameters' JSON Schema (see :class:`ToolCall`); serverless requests may also ask for JSON
content (``response_format``), ``n`` choices and ``logprobs`` (docs/emulator.md).
:class:`Fault` scripts errors, latency, hangs, malformed bodies and broken streams.

In-process::

    emulator = Emulator("secret-key")
    server = aiohttp.test_utils.TestServer(emulator.app, host="127.0.0.1")

Out of process: ``EMULATOR_KEY=... python -m emulator --port 7072``.
"""

from .faults import Fault
from .replies import ToolCall, reply_text
from .server import Emulator, RecordedRequest

__all__ = ["Emulator", "Fault", "RecordedRequest", "ToolCall", "reply_text"]
