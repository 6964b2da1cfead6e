"""Secrets come from files, the environment or systemd credentials; never inline.

A ``Secret`` never shows its value in ``repr``/``str``, so it cannot leak into a log line
or an error message by accident; code that needs the value calls ``reveal()``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Self

from pydantic import BaseModel, ConfigDict, model_validator


class Secret:
    __slots__ = ("_source", "_value")

    def __init__(self, value: str, source: str) -> None:
        self._value = value
        self._source = source

    def reveal(self) -> str:
        return self._value

    @property
    def source(self) -> str:
        """Where the secret came from (a path or variable name, never the value)."""
        return self._source

    def __repr__(self) -> str:
        return f"Secret(<hidden>, from {self._source})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class SecretRef(BaseModel):
    """Where to read a secret: exactly one of ``file``, ``env`` or ``credential``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    file: str | None = None
    env: str | None = None
    credential: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        given = [k for k in ("file", "env", "credential") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError('a secret needs exactly one of "file", "env" or "credential"')
        return self


class SecretError(Exception):
    """A secret could not be read; the message names the source, never a value."""


class SecretStore:
    """Reads secrets once at config load; values are cached by reference."""

    def __init__(self, base_dir: Path, environ: dict[str, str] | None = None) -> None:
        self._base = base_dir
        self._environ = dict(os.environ) if environ is None else environ
        self._cache: dict[SecretRef, Secret] = {}

    def resolve(self, ref: SecretRef) -> Secret:
        if ref in self._cache:
            return self._cache[ref]
        if ref.file is not None:
            secret = self._from_file(self._base / ref.file, f"file {ref.file}")
        elif ref.env is not None:
            if ref.env not in self._environ:
                raise SecretError(f"environment variable {ref.env} is not set")
            secret = Secret(self._environ[ref.env], f"env {ref.env}")
        else:
            assert ref.credential is not None
            directory = self._environ.get("CREDENTIALS_DIRECTORY")
            if not directory:
                raise SecretError(
                    f'credential "{ref.credential}": $CREDENTIALS_DIRECTORY is not set '
                    "(LoadCredential= in the systemd unit provides it)"
                )
            secret = self._from_file(
                Path(directory) / ref.credential, f"credential {ref.credential}"
            )
        self._cache[ref] = secret
        return secret

    @staticmethod
    def _from_file(path: Path, source: str) -> Secret:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise SecretError(f"{source}: cannot read {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise SecretError(f"{source}: {path} is not UTF-8 text") from None
        # One trailing newline is what editors and `echo` add; it is not part of the secret.
        return Secret(text.removesuffix("\n").removesuffix("\r"), source)
