"""What a Key Vault URI looks like, checked at start-up: a mistyped `KEY_VAULT_URL` is refused
with a message rather than found out at the first request (a wait, then a misleading 503)."""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

#: Key Vault's DNS suffixes: Azure, Azure China, Azure US Government, Azure Germany.
VAULT_SUFFIXES = ("vault.azure.net", "vault.azure.cn", "vault.usgovcloudapi.net", "vault.microsoftazure.de")

_VAULT_NAME = re.compile(r"^[a-z][a-z0-9-]{1,22}[a-z0-9]$")
_VISIBLE_ASCII = re.compile(r"^[!-~]+$")


def vault_url_problem(url: str) -> str | None:
    """Why `url` is not a vault URI, or None. A vault URI is https://<name>.vault.azure.net/ or
    a sovereign cloud's; an https URL on the loopback interface (a local vault for tests) is
    accepted too. The message does not quote the value: a mistyped setting may hold a secret."""
    if _is_vault_url(url):
        return None
    return (
        "KEY_VAULT_URL is not a Key Vault URI: expected https://<vault-name>.vault.azure.net/ "
        "(3 to 24 letters, digits and hyphens; or vault.azure.cn, vault.usgovcloudapi.net, "
        "vault.microsoftazure.de) with no path: the vault's Overview page shows it as Vault URI"
    )


def _is_vault_url(url: str) -> bool:
    if not _VISIBLE_ASCII.match(url):
        return False
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        return False
    if parts.scheme != "https" or not parts.hostname or parts.username is not None:
        return False
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return False
    if is_loopback(parts.hostname):
        return True
    name, _, suffix = parts.hostname.partition(".")
    return (
        port in (None, 443)
        and suffix in VAULT_SUFFIXES
        and bool(_VAULT_NAME.match(name))
        and "--" not in name
    )


def is_loopback(host: str) -> bool:
    """`localhost` or a loopback address: where plain http or a test vault may be accepted."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
