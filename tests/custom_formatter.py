"""A user's own formatters, loaded by import path in the tests."""

import json

from shared import ApiType, ChatResult, ContentFormatterBase


class EchoFormatter(ContentFormatterBase):
    """A custom score.py that takes {"prompt": ...} and answers {"reply": ...}."""

    def format_messages_request_payload(self, messages, model_kwargs, api_type):
        return json.dumps({"prompt": messages[-1]["content"], "options": model_kwargs}).encode()

    def format_response_payload(self, output, api_type):
        return ChatResult.from_text(json.loads(output)["reply"])


class ServerlessOnly(EchoFormatter):
    supported_api_types = (ApiType.SERVERLESS,)
