"""Azure ML chat gateway: the code behind `function_app.py` and the local server.

The public surface for users who write their own content formatter:

    from shared import ContentFormatterBase, ChatResult, ApiType
"""

from .api_type import ApiType
from .errors import InvalidRequestError, ResponseFormatError
from .formatters import (
    ChatChoice,
    ChatResult,
    ContentFormatterBase,
    CustomOpenAIChatContentFormatter,
    LlamaChatContentFormatter,
    MistralChatContentFormatter,
)

__all__ = [
    "ApiType",
    "ChatChoice",
    "ChatResult",
    "ContentFormatterBase",
    "CustomOpenAIChatContentFormatter",
    "InvalidRequestError",
    "LlamaChatContentFormatter",
    "MistralChatContentFormatter",
    "ResponseFormatError",
]
