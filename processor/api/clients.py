"""Who the API's callers are: clients with a name, a token and a role, and how the server is opened.

Clients come from the variable named by ``api.keys_env`` (``PROCESSOR_API_KEYS``), comma-separated,
each entry one of::

    token                   a client named key-<12 hex digits of the token's SHA-256>, role user
    name:token              a named client, role user
    name:token:admin        a named client that sees every job (role admin)

A client owns the jobs it submits (``processor.queue.submit.owner_folder``): other clients get 404
for them everywhere; an admin sees every job, those of other clients and the inputs dropped into
the bucket directly. The name, never the token, is what the bucket records (the upload folder)
and what scopes Idempotency-Keys, so a token can be replaced under the same name.

How a server is opened (``Access``): with those clients (``AccessMode.TOKENS``); with none set,
``serve`` makes one admin token at start (``generated_access``) and prints the URL that logs a
browser in with it; ``api.open`` serves without tokens (``AccessMode.OPEN``: everyone is an
admin, and ``processor.api.guard`` holds the Host and Origin checks).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

from processor.config import Settings
from processor.errors import ConfigError

#: A client's name: what the bucket records as a job's owner (a folder name) and what logs show.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: Hex digits of a token's SHA-256 in the name of a client configured without one.
DERIVED_NAME_DIGITS = 12
#: The name of the admin token ``serve`` makes at start when no client is configured.
GENERATED_NAME = "operator"
#: Bytes of randomness in that token (URL-safe base64, 43 characters).
GENERATED_TOKEN_BYTES = 32


class Role(str, Enum):
    user = "user"
    admin = "admin"


class AccessMode(str, Enum):
    #: Every request needs a token of a configured client.
    TOKENS = "tokens"
    #: No tokens (``api.open``): everyone is an admin; Host and Origin are checked instead.
    OPEN = "open"


@dataclass(frozen=True)
class Identity:
    """The caller of one request: a client's name and role (not its token)."""

    name: str
    role: Role

    @property
    def admin(self) -> bool:
        return self.role is Role.admin

    def sees(self, owner: str | None) -> bool:
        """Whether this caller may see a job whose owner is ``owner`` (None: no owner recorded)."""
        return self.admin or (owner is not None and owner == self.name)


#: The caller of an open server: no name, sees everything.
ANONYMOUS = Identity("", Role.admin)


@dataclass(frozen=True)
class Client:
    """A configured client: its identity and its token."""

    identity: Identity
    token: bytes = field(repr=False)


@dataclass(frozen=True)
class Access:
    """How one server lets callers in."""

    mode: AccessMode
    clients: tuple[Client, ...] = ()
    #: The admin token ``serve`` made at start (no client configured): the one token a URL's
    #: ``?token=`` may carry to log a browser in. None when clients are configured or open.
    generated_token: str | None = field(default=None, repr=False)

    @property
    def open(self) -> bool:
        return self.mode is AccessMode.OPEN

    def identify(self, token: bytes) -> Identity | None:
        """The client holding ``token``, compared with every client's token without stopping at a
        match, so the time taken says nothing about which one (or how much of one) matched."""
        found = None
        for client in self.clients:
            if hmac.compare_digest(token, client.token):
                found = client.identity
        return found


def parse_clients(entries: list[str], source: str) -> tuple[Client, ...]:
    """Clients from ``entries`` (module docstring); ``ConfigError`` naming ``source`` and the
    entry's position (never its token) for anything else."""
    clients: list[Client] = []
    names: set[str] = set()
    tokens: set[str] = set()
    for position, entry in enumerate(entries, start=1):
        parts = [p.strip() for p in entry.split(":")]
        where = f"{source}, entry {position}"
        if len(parts) > 3 or (len(parts) == 3 and parts[2] not in {r.value for r in Role}):
            raise ConfigError(f"{where} is not 'token', 'name:token' or 'name:token:admin'; a token has no ':'")
        token = parts[0] if len(parts) == 1 else parts[1]
        name = derived_name(token) if len(parts) == 1 else parts[0]
        role = Role(parts[2]) if len(parts) == 3 else Role.user
        if not token:
            raise ConfigError(f"{where} has an empty token")
        if not NAME_PATTERN.fullmatch(name):
            raise ConfigError(f"{where}: client name {name!r} must be 1-64 letters, digits, '.', '_' or '-', "
                              "starting with a letter or digit")
        if name in names:
            raise ConfigError(f"{where}: client name {name!r} is given twice; each client needs its own name")
        if token in tokens:
            raise ConfigError(f"{where}: its token is given twice; each client needs its own token")
        names.add(name)
        tokens.add(token)
        clients.append(Client(Identity(name, role), token.encode()))
    return tuple(clients)


def derived_name(token: str) -> str:
    """The name of a client configured by its token alone: stable, and no help to guess the token."""
    return "key-" + hashlib.sha256(token.encode()).hexdigest()[:DERIVED_NAME_DIGITS]


def read_keys(settings: Settings, environ: Mapping[str, str] | None = None) -> list[str]:
    """The entries of the variable named by ``api.keys_env`` (comma-separated, blanks dropped)."""
    raw = (environ if environ is not None else os.environ).get(settings.api.keys_env, "")
    return [k.strip() for k in raw.split(",") if k.strip()]


def resolve_access(settings: Settings, keys: list[str] | None = None,
                   environ: Mapping[str, str] | None = None) -> Access:
    """The server's access: ``keys`` (entries as in the variable; ``[]``: open, the explicit
    choice of code that builds an app), else the variable's entries, else ``api.open``, else a
    generated admin token. Clients and ``api.open`` together are a ``ConfigError``."""
    if keys is not None:
        if not keys:
            return Access(AccessMode.OPEN)
        return Access(AccessMode.TOKENS, parse_clients(keys, "the API's keys"))
    entries = read_keys(settings, environ)
    if entries and settings.api.open:
        raise ConfigError(f"api.open is true but {settings.api.keys_env} names clients; unset one of them")
    if entries:
        return Access(AccessMode.TOKENS, parse_clients(entries, settings.api.keys_env))
    if settings.api.open:
        return Access(AccessMode.OPEN)
    return generated_access()


def generated_access() -> Access:
    """One admin client with a fresh random token (``serve`` without configured clients)."""
    token = secrets.token_urlsafe(GENERATED_TOKEN_BYTES)
    client = Client(Identity(GENERATED_NAME, Role.admin), token.encode())
    return Access(AccessMode.TOKENS, (client,), generated_token=token)
