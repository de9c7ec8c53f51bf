"""docs/callers.md's `az ad app` steps create what its example configuration expects: the
audience, the app roles the limits and `required_roles` name, v2 tokens, and a SPA client."""

from __future__ import annotations

import json
import re
from pathlib import Path

from shared.config import parse_config

PAGE = Path(__file__).resolve().parent.parent / "docs" / "callers.md"


def _commands() -> str:
    [block] = [b for b in re.findall(r"```sh\n(.*?)```", PAGE.read_text(), re.S) if "az ad app" in b]
    return block


def _example() -> dict:
    block = next(
        b for b in re.findall(r"```json\n(.*?)```", PAGE.read_text(), re.S) if '"auth": {"type": "entra"' in b
    )
    return json.loads(re.sub(r"<([a-z-]+)>", r"\1", block))


def test_the_example_configuration_is_valid():
    config = parse_config(json.dumps(_example()))
    assert config.callers.auth.type == "entra"
    assert config.callers.limits is not None


def test_the_app_registration_commands_match_the_example_configuration():
    commands = _commands()
    callers = _example()["callers"]
    auth = callers["auth"]
    [uri] = re.findall(r'--identifier-uris "([^"]+)"', commands)
    assert uri in auth["audience"]
    roles_json = re.search(r"--app-roles '(.*?)'\n", commands, re.S).group(1)
    # The shell splices a fresh uuid into each role: any id will do for the check.
    roles = json.loads(re.sub(r"'\"\$\(uuidgen\)\"'", "00000000-0000-0000-0000-000000000000", roles_json))
    created = {role["value"] for role in roles if role["isEnabled"]}
    assert set(auth["required_roles"]) <= created
    assert set(callers["limits"]["by_role"]) <= created
    assert all("User" in role["allowedMemberTypes"] for role in roles)
    # v2 tokens carry the app id as aud and the v2 issuer; the example accepts both forms.
    assert "api.requestedAccessTokenVersion=2" in commands
    assert "spa.redirectUris" in commands
    assert f"{uri}/.default" in PAGE.read_text()
