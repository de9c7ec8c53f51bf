"""The two ways an Azure ML endpoint is called, and the URL path each one ends in."""

from __future__ import annotations

from enum import StrEnum


class ApiType(StrEnum):
    """How an endpoint is called: `dedicated` (managed online endpoint, `/score`) or
    `serverless` (pay-as-you-go, OpenAI-compatible `/v1/chat/completions`)."""

    DEDICATED = "dedicated"
    SERVERLESS = "serverless"

    @classmethod
    def from_config(cls, name: str) -> ApiType:
        """`realtime` is LangChain's deprecated name of `dedicated`."""
        return cls.DEDICATED if name == "realtime" else cls(name)

    @property
    def path(self) -> str:
        """The path an endpoint URL of this api type ends in."""
        return "/score" if self is ApiType.DEDICATED else "/v1/chat/completions"
