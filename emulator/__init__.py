"""An imitation of Azure ML online endpoints for local development, tests and benchmarks.

Both protocols the gateway talks to are served: *dedicated* managed online endpoints
(``POST .../score``) and *serverless* OpenAI-compatible ones (``POST .../v1/chat/completions``,
optionally streamed). Answers are deterministic echoes (see :func:`reply_text`), and
:class:`Fault` scripts errors, latency, hangs, malformed bodies and broken streams.

In-process::

    emulator = Emulator("secret-key")
    server = aiohttp.test_utils.TestServer(emulator.app, host="127.0.0.1")

Out of process: ``EMULATOR_KEY=... python -m emulator --port 7072``.
"""

from .faults import Fault
from .replies import reply_text
from .server import Emulator, RecordedRequest

__all__ = ["Emulator", "Fault", "RecordedRequest", "reply_text"]
