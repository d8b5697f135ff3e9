"""Sealing what a lab's start needs before it is stored: the start's environment (the
lab's hub token) and the person's access token.

The site's key (or keys, newest first) comes from the environment variable named by
``replicas.key_env``. Each key is stretched to a Fernet key with HKDF-SHA256, so any
string of 32 characters or more will do; the first key seals, every key opens (to
change keys, put the new one first and keep the old one until the labs sealed with it
have ended).
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Mapping

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .settings import Settings, SettingsError

log = logging.getLogger("lablink.backend.sealed")

MIN_KEY = 32  # characters of one key
_INFO = b"lablink lab secrets v1"


class SealBroken(Exception):
    """A sealed value no key opens (a key was removed, or the value was damaged)."""


def _fernet(key: str) -> Fernet:
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(key.encode())
    return Fernet(base64.urlsafe_b64encode(derived))


class Sealer:
    """Seals text with the first key and opens it with any of ``keys``."""

    def __init__(self, keys: list[str]):
        if not keys:
            raise ValueError("a sealer needs at least one key")
        short = [i for i, k in enumerate(keys, 1) if len(k) < MIN_KEY]
        if short:
            raise ValueError(f"key {short[0]} has fewer than {MIN_KEY} characters")
        self._fernet = MultiFernet([_fernet(k) for k in keys])

    def seal(self, text: str) -> str:
        return self._fernet.encrypt(text.encode()).decode("ascii")

    def open(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode("ascii")).decode()
        except (InvalidToken, UnicodeError):
            raise SealBroken(
                "A sealed value could not be opened with any of the site's keys; was the "
                "key that sealed it removed from the key variable?"
            ) from None


def sealer_from(settings: Settings, environ: Mapping[str, str]) -> Sealer | None:
    """The site's sealer, from the variable ``replicas.key_env`` names (comma-separated
    keys, newest first). Unset or empty: None on SQLite (a start's environment stays in
    memory only, as with one backend), a SettingsError on PostgreSQL (several replicas
    need it to take over a start). A key shorter than 32 characters: SettingsError."""
    name = settings.replicas.key_env
    keys = [k.strip() for k in environ.get(name, "").split(",") if k.strip()]
    if not keys:
        if settings.resolved_database_url.startswith("postgresql"):
            raise SettingsError(
                f"replicas.key_env: the environment variable {name} must hold a key of at "
                f"least {MIN_KEY} characters; with PostgreSQL the backend stores what a "
                "lab's start needs (its hub token) sealed, so that another replica can "
                "launch it"
            )
        log.info(
            "%s is not set: what a lab's start needs is kept in memory only (a lab not yet "
            "launched when the backend stops must be started again)",
            name,
        )
        return None
    short = [i for i, k in enumerate(keys, 1) if len(k) < MIN_KEY]
    if short:
        raise SettingsError(
            f"replicas.key_env: key {short[0]} in the environment variable {name} has fewer "
            f"than {MIN_KEY} characters; use a long random key (for example `openssl rand "
            "-hex 32`)"
        )
    return Sealer(keys)
