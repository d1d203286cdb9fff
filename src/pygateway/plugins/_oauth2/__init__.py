"""oauth2: Kong's OAuth 2.0 provider plugin, its client credentials and its token store.

_credential.py  OAuth2Credential (a consumer's client application), secret hashing
_store.py       TokenStore (the interface) and MemoryTokenStore (the per-process default)
_http.py        OAuth parameters, redirect URIs, the HTTPS check, answers
_grants.py      the token and authorize endpoints, and how tokens are issued
_plugin.py      the OAuth2 plugin: configuration, dispatch, checking access tokens
"""

from __future__ import annotations

from .._registry import register
from ._credential import OAuth2Credential
from ._plugin import OAuth2
from ._store import STORE_KEY, MemoryTokenStore, TokenStore, token_store

__all__ = [
    "STORE_KEY",
    "MemoryTokenStore",
    "OAuth2",
    "OAuth2Credential",
    "TokenStore",
    "token_store",
]

register(OAuth2)
