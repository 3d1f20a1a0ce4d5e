"""Keep secrets (the API key, credentials in a base URL) out of every message, log line and file.

A base URL may carry credentials (``http://user:KEY@gateway/v1``, basic auth to a gateway); the HTTP
libraries print the URL with them on every request line (``httpx2``/``httpx`` at INFO). The labeller
therefore shows only :func:`redact_url` forms of the URL, passes every error text through a
:class:`Redactor`, and during a run installs :func:`redacting_logs`: the HTTP loggers are held at
WARNING and every handler of the root logger gets a filter that replaces the secrets by ``***``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from urllib.parse import unquote, urlsplit, urlunsplit

MASK = "***"
HTTP_LOGGERS = ("openai", "httpx", "httpx2", "httpcore", "httpcore2")
_MIN_SECRET_LEN = 4  # shorter "secrets" (a user name "a") would mangle every message


def url_credentials(url: str | None) -> list[str]:
    """The user name and password in ``url``'s authority (raw and percent-decoded), if any."""
    if not url:
        return []
    try:
        parts = urlsplit(url)
        user, password = parts.username, parts.password
    except ValueError:
        return []
    out = []
    for value in (user, password):
        if value:
            out += [value, unquote(value)]
    return list(dict.fromkeys(out))


def redact_url(url: str | None) -> str:
    """``url`` with any ``user:password@`` part replaced by ``***@`` (the rest kept for the reader)."""
    if not url:
        return str(url)
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, f"{MASK}@{host}", parts.path, parts.query, parts.fragment))


class Redactor:
    """Replaces each secret (and the credentials of the given URLs) by ``***`` in any text."""

    def __init__(self, secrets: Iterable[str | None] = (), urls: Iterable[str | None] = ()) -> None:
        found = [s for s in secrets if s] + [c for u in urls for c in url_credentials(u)]
        # Longest first, so a secret that contains another is replaced whole.
        self.secrets = sorted({s for s in found if len(s) >= _MIN_SECRET_LEN}, key=len, reverse=True)

    def __call__(self, text: object) -> str:
        text = str(text)
        for s in self.secrets:
            text = text.replace(s, MASK)
        return text

    def __bool__(self) -> bool:
        return bool(self.secrets)


class _RedactingFilter(logging.Filter):
    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = self.redactor(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


@contextmanager
def redacting_logs(redactor: Redactor) -> Iterator[None]:
    """During the block: HTTP loggers at WARNING at least, and every root handler redacts ``redactor``'s secrets.

    Why both: the HTTP libraries log request options (report text) and URLs (credentials) at
    DEBUG/INFO, which ``silverclip -v`` and the CLI's INFO default would print; a warning they emit
    (or any other logger's line) still passes the filter.
    """
    saved = {}
    for name in HTTP_LOGGERS:
        logger = logging.getLogger(name)
        saved[name] = logger.level
        if logger.getEffectiveLevel() < logging.WARNING:
            logger.setLevel(logging.WARNING)
    flt = _RedactingFilter(redactor)
    handlers = list(logging.getLogger().handlers)
    for h in handlers:
        h.addFilter(flt)
    try:
        yield
    finally:
        for h in handlers:
            h.removeFilter(flt)
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)
