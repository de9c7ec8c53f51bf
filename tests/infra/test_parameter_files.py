"""The parameter files deploy a configuration the gateway itself accepts at start-up.

Generic on purpose: a team edits main.bicepparam for its own endpoints, and these tests must keep
holding for any valid edit.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.config import load_config

from .bicep import bicepparam_files, bicepparam_values


@pytest.mark.parametrize("path", bicepparam_files(), ids=lambda p: p.name)
def test_gateway_config_passes_the_gateways_own_validation(path: Path) -> None:
    document = bicepparam_values(path)["gatewayConfig"]
    # What the app reads: string(gatewayConfig) is JSON; KEY_VAULT_URL comes from the template.
    environ = {"GATEWAY_CONFIG": json.dumps(document), "KEY_VAULT_URL": "https://kv-example.vault.azure.net/"}
    config = load_config(environ)
    assert config.endpoints
    assert {endpoint.auth.type for endpoint in config.endpoints} <= {"key_vault", "entra"}
    assert "cors" not in document, "in Azure the platform's CORS applies (parameter allowedCorsOrigins)"
