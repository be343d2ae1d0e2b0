"""The upload token: one shared secret that every HTTP write must present as a bearer token."""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import stat
from pathlib import Path

from overrided.errors import OverridedError

log = logging.getLogger(__name__)

TOKEN_FILE = "token"


class TokenError(OverridedError):
    """The token file cannot be read or written."""


def load_or_create_token(state_dir: Path) -> tuple[str, bool]:
    """The token stored in ``state_dir/token``, created (mode 0600) on first use.

    Returns ``(token, created)``; ``created`` tells the caller to print the token once.
    """
    path = state_dir / TOKEN_FILE
    try:
        token = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        token = ""
    except (OSError, UnicodeDecodeError) as err:
        raise TokenError(f"{path}: cannot read the upload token: {err}") from err
    else:
        if not token:
            raise TokenError(f"{path}: the upload token file is empty; delete it to get a new one")
        if os.stat(path).st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("%s: the upload token is readable by others; chmod 600 it", path)
        return token, False
    token = secrets.token_urlsafe(32)
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        # O_EXCL: two servers starting at once must not hand out two different tokens.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return load_or_create_token(state_dir)
    except OSError as err:
        raise TokenError(f"{path}: cannot create the upload token: {err}") from err
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(token + "\n")
    return token, True


def bearer_matches(authorization: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header carries ``Bearer <token>`` (RFC 6750 §2.1).

    The scheme is case-insensitive (RFC 9110 §11.1); the token is compared in constant time.
    """
    if not authorization:
        return False
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.strip().encode(), token.encode())
