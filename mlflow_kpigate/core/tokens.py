"""Bearer tokens kept in files: what a kpigate token looks like, and reading one.

The in-cluster collector authenticates its callers with tokens that Kubernetes mounts
from a Secret as files; the collector reads them to check requests, the controller to
send its stage notices (and to write the request logger's URL). Both sides read the file
here so that they agree on one format: 32 to 512 characters from the URL-safe set
``A-Z a-z 0-9 . _ ~ -``. URL-safe because Seldon's request logger can only carry its
token in the URL path (docs/kubernetes.md, "Trust model"); at least 32 characters so a
token cannot be guessed (``openssl rand -hex 32`` gives 64, ``secrets.token_urlsafe(32)``
43). A placeholder such as ``<generate me>`` is not a token, so a template that was never
filled in is refused instead of being used as a well-known secret.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["GENERATE_HINT", "read_token_file", "token_problem"]

MIN_LENGTH = 32
MAX_LENGTH = 512
_TOKEN = re.compile(r"[A-Za-z0-9._~-]+")
#: How to make a token, for error messages.
GENERATE_HINT = "generate one with `openssl rand -hex 32`"


def token_problem(text: str) -> str | None:
    """Why ``text`` is not a usable token (None when it is). Never quotes the text."""
    if not text:
        return f"is empty; {GENERATE_HINT}"
    if len(text) < MIN_LENGTH:
        return (f"is {len(text)} characters long, shorter than {MIN_LENGTH}; "
                f"{GENERATE_HINT}")
    if len(text) > MAX_LENGTH:
        return f"is longer than {MAX_LENGTH} characters; {GENERATE_HINT}"
    if not _TOKEN.fullmatch(text):
        return ("has characters other than A-Z a-z 0-9 . _ ~ - (a placeholder that was "
                f"never filled in?); {GENERATE_HINT}")
    return None


def read_token_file(path: Path | str) -> str:
    """The token in the file at ``path``, without its trailing newline.

    ``ValueError`` with a one-line reason naming the file (never its content) when the
    file cannot be read or does not hold one token.
    """
    where = Path(path).expanduser()
    try:
        raw = where.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"{where}: no such file; mount the Secret holding the token "
                         "there") from None
    except OSError as exc:
        raise ValueError(f"{where}: cannot be read ({exc.strerror or exc})") from None
    try:
        text = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise ValueError(f"{where}: the token is not ASCII text; {GENERATE_HINT}") from None
    problem = token_problem(text)
    if problem is not None:
        raise ValueError(f"{where}: the token {problem}")
    return text
