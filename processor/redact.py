"""Credentials never leave the process in text: the one helper that masks them in URLs.

``store.endpoint_url`` may carry keys (``http://key:secret@host``, as MinIO and rclone users
write it). The store adapters take them out of the URL before any client sees it (so vendor
error messages cannot echo them), and every place that prints an endpoint, an error or a log line
passes the text through ``redact`` as well, so a URL with credentials that reached a message some
other way (a config error quoting the value) is masked too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit, urlunsplit

#: What replaces the user-info part of a URL.
MASK = "***"

# scheme://user[:password]@ : the user-info of any URL in a text. Neither part may hold "/", "@"
# or whitespace (RFC 3986 user-info cannot hold "/" or "@" unescaped).
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")


def redact(text: str) -> str:
    """``text`` with the user-info of every URL in it replaced by ``***``."""
    return _USERINFO.sub(lambda m: f"{m.group('scheme')}{MASK}@", text)


@dataclass(frozen=True)
class EndpointCredentials:
    access_key: str
    secret_key: str


def split_endpoint(url: str | None) -> tuple[str | None, EndpointCredentials | None]:
    """(``url`` without user-info, the ``key:secret`` it held or None).

    A user-info without a password is dropped (it cannot sign requests) and returned as None.
    """
    if not url:
        return url, None
    parts = urlsplit(url)
    if parts.username is None and "@" not in parts.netloc:
        return url, None
    host = parts.netloc.rpartition("@")[2]
    clean = urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    if parts.username and parts.password:
        return clean, EndpointCredentials(unquote(parts.username), unquote(parts.password))
    return clean, None
