"""Who may use the station: a users file of names and salted token hashes, and the check on every request.

The server serves patient images, so off loopback every request (the page, its scripts, the websocket,
uploads and downloads) needs a valid token. A token is 32 random bytes, so one salted SHA-256 is enough to
store it (a slow password hash protects guessable secrets; these are not). The first visit brings it in the
URL (`/?token=...`); the server answers with an HttpOnly cookie and a redirect that drops it from the
address bar and the history. Every user's hash is compared, in constant time, whatever matches first.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
from pathlib import Path
from typing import Dict, Optional

from extremeaug.common.errors import ExtremeAugError
from extremeaug.common.files import write_bytes

COOKIE = "extremeaug_token"
USER_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")


def _digest(salt: str, token: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt) + token.encode("utf-8", "replace")).hexdigest()


class Users:
    """The users file: {"users": {name: {"salt": hex, "sha256": hex}}}; never holds a token itself."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._users: Dict[str, dict] = {}
        if self.path.exists():
            try:
                self._users = dict(json.loads(self.path.read_text(encoding="utf-8"))["users"])
            except (OSError, ValueError, KeyError, TypeError) as error:
                raise ExtremeAugError(f"{self.path}: not a users file ({error}); make one with "
                                      "`extremeaug web-user FILE NAME`") from error

    def __len__(self) -> int:
        return len(self._users)

    def add(self, name: str) -> str:
        """Add a user (or give one a new token, which voids the old); returns the token, shown once."""
        if not USER_NAME.fullmatch(name):
            raise ExtremeAugError(f"user name {name!r}: use 1-64 letters, digits, '_', '.', '@' or '-'")
        token, salt = secrets.token_urlsafe(32), secrets.token_hex(16)
        self._users[name] = {"salt": salt, "sha256": _digest(salt, token)}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(json.dumps({"users": self._users}, indent=1).encode("utf-8"), self.path)
        os.chmod(self.path, 0o600)   # only the server's account reads the hashes (Windows: the folder's ACL)
        return token

    def who(self, token: Optional[str]) -> Optional[str]:
        """The user a token belongs to, or None; the same work for a wrong token as for a right one."""
        found = None
        for name, entry in self._users.items():
            if hmac.compare_digest(_digest(entry["salt"], token or ""), entry["sha256"]) and token:
                found = name
        return found


def is_loopback(host: str) -> bool:
    return host in ("127.0.0.1", "::1", "localhost") or host.startswith("127.")


class Access:
    """What a request must carry. On loopback without a users file every request is the login user's (the
    laptop case: only this machine can reach the port); otherwise a token must name a user."""

    def __init__(self, host: str, users: Optional[Users], local_user: str):
        if users is None and not is_loopback(host):
            raise ExtremeAugError(f"--host {host} serves patient images beyond this machine: give --users FILE "
                                  "(make one with `extremeaug web-user FILE NAME`), or keep --host 127.0.0.1 and "
                                  "reach it through an SSH tunnel")
        if users is not None and not len(users):
            raise ExtremeAugError(f"{users.path} has no user: add one with `extremeaug web-user {users.path} NAME`")
        self.users, self.local_user = users, local_user

    def user(self, cookie: Optional[str], query: Optional[str]) -> Optional[str]:
        if self.users is None:
            return self.local_user
        return self.users.who(query) if query else self.users.who(cookie)
