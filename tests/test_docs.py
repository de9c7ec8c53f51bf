"""The configuration examples in README.md and docs/ are documents the gateway accepts: whole
documents, and single endpoints (checked inside a document of their own)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from shared.config import parse_config

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def configuration_examples() -> list[tuple[str, str]]:
    examples = []
    for page in PAGES:
        for block in re.findall(r"```json\n(.*?)```", page.read_text(), re.S):
            if '"endpoints"' in block:
                examples.append((page.relative_to(ROOT).as_posix(), block))
            elif '"endpoint_url"' in block:
                examples.append((page.relative_to(ROOT).as_posix(), f'{{"endpoints": [{block}]}}'))
    return examples


def test_the_pages_have_configuration_examples():
    pages = {page for page, _ in configuration_examples()}
    assert {"README.md", "docs/configuration.md", "docs/langchain.md"} <= pages


@pytest.mark.parametrize(("page", "example"), configuration_examples())
def test_a_configuration_example_is_valid(page: str, example: str):
    # The documented placeholders (<endpoint>, <region>) filled in, as a reader would:
    # the gateway refuses them at start-up.
    filled = re.sub(r"<([a-z-]+)>", r"\1", example)
    config = parse_config(filled, source=page)
    assert config.endpoints
