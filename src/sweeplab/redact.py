"""Secrets never written down: a password in a URL (an Optuna storage, a tracking URI) becomes ``***``
wherever sweeplab records or prints it, and only this process can map the masked URL back."""
from __future__ import annotations

import re

MASK = "***"
# scheme://[user]:password@ anywhere in a text (a URL, an override, a config dump): the user may be empty, and the
# password runs to the authority's last @ (one typed with an @ or a quote unencoded is masked whole)
_CREDENTIALS = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s'\"]*:)[^/\s]*@")
# a password given as a query parameter (postgresql://u@host/db?password=secret, which SQLAlchemy takes)
_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&#\s'\"]*", re.IGNORECASE)
_revealed: dict[str, str] = {}  # masked URL -> the URL it stands for, in this process only


def redact(text: str) -> str:
    """``text`` with the password of every URL in it masked:
    postgresql://user:secret@host/db -> postgresql://user:***@host/db, ...?password=secret -> ...?password=***"""
    return _QUERY_PASSWORD.sub(rf"\g<1>{MASK}", _CREDENTIALS.sub(rf"\g<1>{MASK}@", text))


def hide(url: str) -> str:
    """The masked ``url``, to keep in an object that may be pickled or logged; ``reveal`` undoes it here."""
    masked = redact(url)
    if masked != url:
        _revealed[masked] = url
    return masked


def reveal(url: str) -> str:
    """The URL that ``hide`` masked in this process (an unmasked URL comes back as it is)."""
    return _revealed.get(url, url)
