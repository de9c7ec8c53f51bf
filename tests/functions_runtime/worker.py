"""The Python worker's process, played on Microsoft's `azure_functions_runtime` (Python 3.13+).

In Azure and under Core Tools, the Functions host starts the Python worker with `--host`,
`--port` and `--workerId`; the worker connects back, and the two exchange `StreamingMessage`s
over gRPC. For Python 3.13+ that worker is a thin proxy (`proxy_worker` in the Azure Functions
Python worker repository) which hands each message to the `azure_functions_runtime` library:
`worker_init_request` (it indexes `function_app.py` and, with HTTP streams, starts the HTTP
server the host forwards requests to), `functions_metadata_request`, `function_load_request`,
`invocation_request`. This module is that proxy, minus gRPC: it connects to the harness's host
(`host.py`) over a TCP socket on 127.0.0.1 and reads and writes one JSON object per line, shaped
like `StreamingMessage` (`{"request_id": ..., "invocation_request": {...}}`).

The runtime builds and reads protobuf messages from the `protos` module it is handed. No package
on PyPI ships the current `FunctionRpc.proto` (azure-functions-worker stops at 1.1.9, 2020, whose
messages lack the metadata-indexing fields), so this module hands it stand-ins: plain classes
carrying exactly the fields the runtime reads and writes, with protobuf's `WhichOneof` where it
calls it. Each response is written back as JSON.

Run with the Python 3.13 virtual environment: ``python -P worker.py --host 127.0.0.1 --port N
--worker-id ID`` (``-P``: this directory must not shadow any module of the app).
Standard library only, besides the runtime.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import enum
import json
import logging
import os
import sys
from typing import Any, ClassVar

# One line of the channel: the host bounds its requests far below this.
MAX_LINE_BYTES = 16 * 1024 * 1024


# --- stand-ins for the protobuf messages of FunctionRpc.proto ---------------------------


class Message:
    """A protobuf message reduced to what the runtime touches: fields as attributes (unset ones
    read as their default), and `WhichOneof` over the groups the class declares."""

    defaults: ClassVar[dict[str, Any]] = {}
    oneofs: ClassVar[dict[str, tuple[str, ...]]] = {}

    def __init__(self, **fields: Any) -> None:
        for name, value in self.defaults.items():
            setattr(self, name, value() if callable(value) else value)
        self._set = set(fields)
        for name, value in fields.items():
            setattr(self, name, value)

    def WhichOneof(self, group: str) -> str | None:  # noqa: N802 (protobuf's name)
        return next((f for f in self.oneofs[group] if getattr(self, f, None) is not None), None)

    def to_json(self) -> dict[str, Any]:
        return {name: _to_json(getattr(self, name)) for name in sorted(self._set)}


def _to_json(value: Any) -> Any:
    if isinstance(value, Message):
        return value.to_json()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_json(v) for v in value]
    if isinstance(value, bytes):
        return {"bytes_base64": base64.b64encode(value).decode()}
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    return value


def _message(name: str, **class_attributes: Any) -> type[Message]:
    return type(name, (Message,), class_attributes)


class StatusResult(Message):
    Failure, Success, Cancelled = 0, 1, 2


class BindingInfo(Message):
    # The proto's Direction and DataType enums, which the runtime compares with azure.functions'
    # integer values.
    out, inout = 1, 2
    undefined, string, binary, stream = 0, 1, 2, 3


setattr(BindingInfo, "in", 0)  # a Python keyword: protobuf exposes it the same way


class TypedData(Message):
    oneofs = {
        "data": (
            "string",
            "json",
            "bytes",
            "stream",
            "http",
            "int",
            "double",
            "collection_bytes",
            "collection_string",
            "collection_double",
            "collection_sint64",
            "model_binding_data",
            "collection_model_binding_data",
        )
    }


class ParameterBinding(Message):
    oneofs = {"rpc_data": ("data", "rpc_shared_memory")}


class RpcHttpCookie(Message):
    class SameSite:
        Lax, Strict, ExplicitNone = 1, 2, 3


setattr(RpcHttpCookie.SameSite, "None", 0)

# An unset message field reads as an empty message in protobuf, as `body` does here.
RpcHttp = _message("RpcHttp", defaults={"headers": dict, "params": dict, "query": dict, "body": TypedData})
RpcTraceContext = _message(
    "RpcTraceContext", defaults={"trace_parent": "", "trace_state": "", "attributes": dict}
)
RetryContext = _message("RetryContext", defaults={"retry_count": 0, "max_retry_count": 0, "exception": None})
InvocationRequest = _message(
    "InvocationRequest",
    defaults={
        "input_data": list,
        "trigger_metadata": dict,
        "trace_context": RpcTraceContext,
        "retry_context": RetryContext,
    },
)
WorkerInitRequest = _message(
    "WorkerInitRequest", defaults={"capabilities": dict, "function_app_directory": ""}
)
FunctionLoadRequest = _message("FunctionLoadRequest")
FunctionsMetadataRequest = _message("FunctionsMetadataRequest")
StreamingMessage = _message("StreamingMessage")

PROTOS = type(sys)("protos_stand_in")
for _cls in (StatusResult, BindingInfo, TypedData, ParameterBinding, RpcHttpCookie, RpcHttp):
    setattr(PROTOS, _cls.__name__, _cls)
for _name in (
    "WorkerInitResponse",
    "WorkerMetadata",
    "RpcException",
    "FunctionMetadataResponse",
    "RpcFunctionMetadata",
    "RpcRetryOptions",
    "FunctionLoadResponse",
    "InvocationResponse",
    "FunctionEnvironmentReloadResponse",
    "NullableString",
    "NullableBool",
    "NullableDouble",
    "NullableTimestamp",
):
    setattr(PROTOS, _name, _message(_name))


def _typed_data(data: dict[str, Any] | None) -> TypedData | None:
    """A `TypedData` from its JSON form; HTTP trigger data is the only kind the host sends here."""
    if data is None:
        return None
    if "http" in data:
        http = data["http"]
        return TypedData(
            http=RpcHttp(
                method=http["method"],
                url=http["url"],
                headers=dict(http.get("headers", {})),
                params=dict(http.get("params", {})),
                query=dict(http.get("query", {})),
                body=_typed_data(http.get("body")) or TypedData(),
            )
        )
    if "string" in data:
        return TypedData(string=data["string"])
    if "bytes_base64" in data:
        return TypedData(bytes=base64.b64decode(data["bytes_base64"]))
    raise ValueError(f"unsupported TypedData in this harness: {sorted(data)}")


def streaming_message(envelope: dict[str, Any]) -> tuple[str, Message]:
    """The kind of an incoming host message and the message, built from its JSON form."""
    request_id = envelope["request_id"]
    if "worker_init_request" in envelope:
        body = envelope["worker_init_request"]
        content: Message = WorkerInitRequest(
            host_version=body.get("host_version", ""),
            capabilities=dict(body.get("capabilities", {})),
            function_app_directory=body["function_app_directory"],
            worker_directory=body.get("worker_directory", ""),
        )
        kind = "worker_init_request"
    elif "functions_metadata_request" in envelope:
        body = envelope["functions_metadata_request"]
        content = FunctionsMetadataRequest(function_app_directory=body["function_app_directory"])
        kind = "functions_metadata_request"
    elif "function_load_request" in envelope:
        body = envelope["function_load_request"]
        content = FunctionLoadRequest(function_id=body["function_id"], metadata=body.get("metadata"))
        kind = "function_load_request"
    elif "invocation_request" in envelope:
        body = envelope["invocation_request"]
        trace = body.get("trace_context", {})
        content = InvocationRequest(
            invocation_id=body["invocation_id"],
            function_id=body["function_id"],
            input_data=[
                ParameterBinding(name=b["name"], data=_typed_data(b["data"]))
                for b in body.get("input_data", [])
            ],
            trigger_metadata={k: _typed_data(v) for k, v in body.get("trigger_metadata", {}).items()},
            trace_context=RpcTraceContext(
                trace_parent=trace.get("trace_parent", ""),
                trace_state=trace.get("trace_state", ""),
                attributes=dict(trace.get("attributes", {})),
            ),
        )
        kind = "invocation_request"
    else:
        raise ValueError(f"unknown message from the host: {sorted(envelope)}")
    return kind, StreamingMessage(request_id=request_id, **{kind: content})


class WorkerRequest:
    """What the proxy worker hands the runtime: the message and the worker's own properties."""

    def __init__(self, name: str, request: Message, properties: dict[str, Any]) -> None:
        self.name = name
        self.request = request
        self.properties = properties


# --- the proxy ---------------------------------------------------------------------------

RESPONSES = {
    "worker_init_request": ("WorkerInitRequest", "worker_init_response"),
    "functions_metadata_request": ("WorkerMetadataRequest", "function_metadata_response"),
    "function_load_request": ("FunctionLoadRequest", "function_load_response"),
    "invocation_request": ("WorkerInvocationRequest", "invocation_response"),
}


class ProxyWorker:
    def __init__(self, host: str, writer: asyncio.StreamWriter) -> None:
        self._host = host
        self._writer = writer
        self._tasks: set[asyncio.Task[None]] = set()

    def send(self, envelope: dict[str, Any]) -> None:
        self._writer.write(json.dumps(envelope, separators=(",", ":")).encode() + b"\n")

    async def handle(self, envelope: dict[str, Any]) -> None:
        import azure_functions_runtime as runtime

        kind, message = streaming_message(envelope)
        name, response_kind = RESPONSES[kind]
        if kind == "worker_init_request":
            # The proxy puts the app's directory first on sys.path before the runtime imports it.
            directory = message.worker_init_request.function_app_directory
            sys.path.insert(0, directory)
            os.chdir(directory)
        request = WorkerRequest(name, message, {"protos": PROTOS, "host": self._host})
        response = await getattr(runtime, kind)(request)
        self.send({"request_id": envelope["request_id"], response_kind: _to_json(response)})
        await self._writer.drain()

    def dispatch(self, envelope: dict[str, Any]) -> None:
        # Invocations run side by side, as the proxy runs them; everything else in order.
        task = asyncio.create_task(self.handle(envelope))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--worker-id", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(levelname)s %(message)s")

    import azure_functions_runtime as runtime

    runtime.start_threadpool_executor()
    reader, writer = await asyncio.open_connection(args.host, args.port, limit=MAX_LINE_BYTES)
    worker = ProxyWorker(args.host, writer)
    worker.send({"request_id": "", "start_stream": {"worker_id": args.worker_id}})
    while line := await reader.readline():
        envelope = json.loads(line)
        if "invocation_request" in envelope:
            worker.dispatch(envelope)
        else:
            await worker.handle(envelope)
    runtime.stop_threadpool_executor()


if __name__ == "__main__":
    asyncio.run(main())
