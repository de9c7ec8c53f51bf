"""The Functions host's side of an HTTP-streams app, played for `worker.py` on 127.0.0.1.

What the host does and this plays (the real host is .NET and cannot be installed here):

- start the Python worker process with the app settings as its environment, and wait for it to
  connect back (`--host`, `--port`, `--worker-id`);
- `worker_init_request` with the host's capabilities; the worker answers with its own, and an
  app that imports the HTTP-streams extension answers `HttpUri` (its HTTP server) and
  `RequiresRouteParameters`: from then on the host forwards requests instead of copying them;
- `functions_metadata_request`: the functions the worker indexed, with their raw bindings, from
  which the host builds its routes (`routePrefix` from host.json), then `function_load_request`
  for each;
- per HTTP request: an `invocation_request` carrying the request's method, URL, headers, query
  and route parameters (not its body), and at the same time the request itself forwarded to
  `HttpUri` with `x-ms-invocation-id`; the worker's response is streamed back to the client
  chunk by chunk, and a client that leaves closes the forwarded request.

Not played: function keys (`func start` does not check them either), the host's own routes
(`/admin`, the home page), request body size limits, host.json timeouts, logs sent over the
channel (the worker's log goes to its stderr, kept in `worker_output`).
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import re
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

WORKER_SCRIPT = Path(__file__).with_name("worker.py")

# What a real host says it handles, for the runtime to read (it only looks at FunctionDataCache).
HOST_CAPABILITIES = {
    "RpcHttpBodyOnly": "true",
    "RawHttpBodyBytes": "true",
    "TypedDataCollection": "true",
    "HandlesWorkerTerminateMessage": "true",
    "HandlesInvocationCancelMessage": "true",
}

# Bounds: one channel line, the start-up of the worker (importing the app), one reply.
MAX_LINE_BYTES = 16 * 1024 * 1024
START_TIMEOUT_S = 60.0
REPLY_TIMEOUT_S = 30.0
# Per read from the worker's HTTP server: long enough for any test's slowest stream.
FORWARD_READ_TIMEOUT_S = 30.0

HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "host"}
)


class WorkerInitFailed(RuntimeError):
    """The worker's `worker_init_response` was a failure; `message` is the runtime's own."""

    def __init__(self, message: str, worker_output: str) -> None:
        super().__init__(message)
        self.message = message
        self.worker_output = worker_output


@dataclass(frozen=True)
class IndexedFunction:
    name: str
    function_id: str
    bindings: list[dict[str, Any]]

    @property
    def trigger(self) -> dict[str, Any]:
        return next(b for b in self.bindings if b["type"] == "httpTrigger")


class FunctionsHost:
    """One worker process and the HTTP front the host puts before it; `url` is the front's."""

    def __init__(self, python: Path, app_directory: Path, settings: Mapping[str, str]) -> None:
        self._python = python
        self._app_directory = app_directory
        self._settings = dict(settings)
        host_json = json.loads((app_directory / "host.json").read_text())
        self.route_prefix = host_json.get("extensions", {}).get("http", {}).get("routePrefix", "api")
        self.functions: dict[str, IndexedFunction] = {}
        self.worker_capabilities: dict[str, str] = {}
        #: Every invocation's response from the worker, in the order they came back.
        self.invocations: list[dict[str, Any]] = []
        self._output: collections.deque[str] = collections.deque(maxlen=400)
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._connected: asyncio.Future[None] | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._channel: asyncio.Server | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._routes: list[tuple[re.Pattern[str], frozenset[str], IndexedFunction]] = []
        self.port = 0

    # --- start-up: the worker, its init, the metadata and the loads ----------------------

    async def start(self) -> FunctionsHost:
        try:
            await self._start_worker()
            init = await self.request(
                "worker_init_request",
                {
                    "host_version": "4.1040.0",
                    "capabilities": HOST_CAPABILITIES,
                    "function_app_directory": str(self._app_directory),
                    "worker_directory": str(WORKER_SCRIPT.parent),
                },
                timeout=START_TIMEOUT_S,
            )
            if init["result"].get("status") != 1:
                raise WorkerInitFailed(init["result"]["exception"]["message"], self.worker_output)
            self.worker_capabilities = init.get("capabilities", {})
            metadata = await self.request(
                "functions_metadata_request", {"function_app_directory": str(self._app_directory)}
            )
            for result in metadata.get("function_metadata_results") or []:
                function = IndexedFunction(
                    result["name"], result["function_id"], [json.loads(b) for b in result["raw_bindings"]]
                )
                loaded = await self.request(
                    "function_load_request", {"function_id": function.function_id, "metadata": result}
                )
                if loaded["result"].get("status") != 1:
                    raise WorkerInitFailed(loaded["result"]["exception"]["message"], self.worker_output)
                self.functions[function.name] = function
                self._routes.append(self._route(function))
            await self._start_front()
        except BaseException:
            await self.stop()
            raise
        return self

    async def _start_worker(self) -> None:
        loop = asyncio.get_running_loop()
        self._connected = loop.create_future()
        self._channel = await asyncio.start_server(self._on_connect, "127.0.0.1", 0, limit=MAX_LINE_BYTES)
        channel_port = self._channel.sockets[0].getsockname()[1]
        # The app settings are the worker's environment, with only what a process needs besides.
        env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR") if k in os.environ}
        env.update(PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1", **self._settings)
        self._process = await asyncio.create_subprocess_exec(
            str(self._python),
            "-P",
            str(WORKER_SCRIPT),
            "--host",
            "127.0.0.1",
            "--port",
            str(channel_port),
            "--worker-id",
            str(uuid.uuid4()),
            cwd=self._app_directory,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        self._spawn(self._keep_output(self._process.stdout))
        exited = self._spawn(self._process.wait())
        done, _ = await asyncio.wait(
            {self._connected, exited}, timeout=START_TIMEOUT_S, return_when="FIRST_COMPLETED"
        )
        if self._connected not in done:
            raise WorkerInitFailed("the worker did not connect to the host", self.worker_output)

    async def _keep_output(self, stream: asyncio.StreamReader | None) -> None:
        assert stream is not None
        while line := await stream.readline():
            self._output.append(line.decode(errors="replace").rstrip())

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._writer is not None:  # one worker per host
            writer.close()
            return
        self._writer = writer
        try:
            while line := await reader.readline():
                envelope = json.loads(line)
                if "start_stream" in envelope:
                    assert self._connected is not None
                    self._connected.set_result(None)
                    continue
                future = self._pending.pop(envelope["request_id"], None)
                if future is not None and not future.done():
                    future.set_result(envelope)
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ConnectionError("the worker closed its channel"))

    async def request(
        self, kind: str, body: dict[str, Any], timeout: float = REPLY_TIMEOUT_S
    ) -> dict[str, Any]:
        """Send one message to the worker and wait for its reply's content."""
        if self._writer is None:
            raise ConnectionError("no worker is connected")
        request_id = uuid.uuid4().hex
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        self._writer.write(json.dumps({"request_id": request_id, kind: body}).encode() + b"\n")
        await self._writer.drain()
        try:
            envelope = await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(request_id, None)
        (content,) = (value for key, value in envelope.items() if key != "request_id")
        return content

    # --- serving: routes, invocations and forwarding --------------------------------------

    def _route(self, function: IndexedFunction) -> tuple[re.Pattern[str], frozenset[str], IndexedFunction]:
        trigger = function.trigger
        template = f"{self.route_prefix}/{trigger['route']}".strip("/")
        pattern = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(template))
        methods = frozenset(m.upper() for m in trigger.get("methods") or ())
        return re.compile(f"/{pattern}"), methods, function

    async def _start_front(self) -> None:
        http_uri = self.worker_capabilities.get("HttpUri")
        if not http_uri:
            raise WorkerInitFailed("the worker did not start an HTTP server (no HttpUri)", self.worker_output)
        self._http_uri = http_uri.rstrip("/")
        self._session = aiohttp.ClientSession(
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=FORWARD_READ_TIMEOUT_S),
        )
        app = web.Application(client_max_size=MAX_LINE_BYTES)
        app.router.add_route("*", "/{tail:.*}", self._serve)
        # A client that leaves cancels its handler, as it aborts the host's forwarded request.
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _match(self, method: str, path: str) -> tuple[IndexedFunction, dict[str, str]] | None:
        for pattern, methods, function in self._routes:
            found = pattern.fullmatch(path)
            if found and (not methods or method in methods):
                return function, found.groupdict()
        return None

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        matched = self._match(request.method, request.path)
        if matched is None:
            return web.Response(status=404)
        function, route_params = matched
        invocation_id = str(uuid.uuid4())
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP]
        invocation = self._spawn(self._invoke(invocation_id, function, request, headers, route_params))
        forwarded = [*headers, ("x-ms-invocation-id", invocation_id)]
        assert self._session is not None
        body = request.content.iter_any() if request.can_read_body else None
        async with self._session.request(
            request.method, self._http_uri + request.path_qs, headers=forwarded, data=body
        ) as upstream:
            try:
                response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
                for name, value in upstream.headers.items():
                    if name.lower() not in HOP_BY_HOP:
                        response.headers.add(name, value)
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
            except BaseException:
                upstream.close()  # the worker's server sees the client leave
                raise
        # The worker answered the invocation when the function returned, long before a stream
        # ends; waiting here lets a test read `invocations` once its response is complete.
        await asyncio.wait({invocation}, timeout=REPLY_TIMEOUT_S)
        return response

    async def _invoke(
        self,
        invocation_id: str,
        function: IndexedFunction,
        request: web.Request,
        headers: list[tuple[str, str]],
        route_params: dict[str, str],
    ) -> None:
        merged: dict[str, str] = {}
        for name, value in headers:
            merged[name] = f"{merged[name]}, {value}" if name in merged else value
        try:
            reply = await self.request(
                "invocation_request",
                {
                    "invocation_id": invocation_id,
                    "function_id": function.function_id,
                    "input_data": [
                        {
                            "name": function.trigger["name"],
                            "data": {
                                "http": {
                                    "method": request.method,
                                    "url": str(request.url),
                                    "headers": merged,
                                    "query": dict(request.query),
                                    "params": route_params,
                                }
                            },
                        }
                    ],
                    "trigger_metadata": {},
                    "trace_context": {
                        "trace_parent": f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01",
                        "trace_state": "",
                        "attributes": {},
                    },
                },
            )
        except (ConnectionError, TimeoutError) as exc:
            reply = {"result": {"status": 0, "exception": {"message": f"host: {exc!r}"}}}
        self.invocations.append({"function": function.name, **reply})

    # --- shutdown ---------------------------------------------------------------------------

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @property
    def worker_output(self) -> str:
        return "\n".join(self._output)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._writer is not None:
            self._writer.close()  # the worker's loop ends at end of input
            self._writer = None
        if self._process is not None and self._process.returncode is None:
            try:
                await asyncio.wait_for(self._process.wait(), 5)
            except TimeoutError:
                self._process.kill()
                await self._process.wait()
        if self._channel is not None:
            self._channel.close()
            await self._channel.wait_closed()
            self._channel = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def main() -> None:  # pragma: no cover - a manual check: python -m tests.functions_runtime.host
    from .venv import runtime_python

    async def run() -> None:
        host = await FunctionsHost(runtime_python(), Path.cwd(), dict(os.environ)).start()
        print(host.url, sorted(host.functions), flush=True)
        await asyncio.Event().wait()

    asyncio.run(run())


if __name__ == "__main__":
    main()
