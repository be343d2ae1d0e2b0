"""``overrided serve --config overrided.toml``: an instance's settings in one file.

A lab's instance outgrows its flags: folders, ports, the token file, the URL prefixes builds may
be fetched from, DHCP. The file says the same things the flags say, one key per flag, and flags
given on the command line win over it. It is checked like a board file: the first problem is
one line naming the file, the key and what is wrong (``overrided.toml: tftp.port: …``).
Relative paths in it are relative to the file's folder, so ``/etc/overrided/overrided.toml`` can
say ``boards = "boards"``.

The ``[dhcp]`` table is handed through as it is: ``dhcp.<key>`` sets ``overrided serve
--dhcp-<key>`` (whatever DHCP options this ``overrided`` has), so the file never lags behind
the flags.
"""

from __future__ import annotations

import argparse
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from overrided.errors import OverridedError
from overrided.fetch import check_prefix

Port = Annotated[int, Field(ge=0, le=65535)]
Seconds = Annotated[float, Field(gt=0)]
DhcpValue = str | int | bool | list[str]


class ConfigFileError(OverridedError):
    """A config file that cannot be used; ``str()`` names the file, the key and the problem."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TftpSection(_Section):
    """``[tftp]``: ``--tftp-addr``, ``--tftp-port``, ``--max-blksize``, ``--max-windowsize``."""

    addr: str | None = None
    port: Port | None = None
    max_blksize: Annotated[int, Field(ge=8, le=65464)] | None = None
    max_windowsize: Annotated[int, Field(ge=1, le=65535)] | None = None


class HttpSection(_Section):
    """``[http]``: ``--http-addr``, ``--http-port``, ``--http-timeout``, ``--public-url``,
    ``--max-upload``; ``enabled = false`` is ``--no-http``."""

    enabled: bool = True
    addr: str | None = None
    port: Port | None = None
    timeout: Seconds | None = None
    public_url: str | None = None
    max_upload: Annotated[int, Field(gt=0)] | None = None


class FetchSection(_Section):
    """``[fetch]``: builds by URL, ``--allow-url`` and the ``--fetch-*`` limits."""

    allow: list[Annotated[str, AfterValidator(check_prefix)]] | None = None
    max_size: Annotated[int, Field(gt=0)] | None = None
    timeout: Seconds | None = None
    stall: Seconds | None = None
    redirects: Annotated[int, Field(ge=0, le=20)] | None = None
    resumes: Annotated[int, Field(ge=0, le=100)] | None = None


class ConfigFile(_Section):
    """The whole file; every key is optional, and a key the file leaves out keeps the flag's
    default."""

    boards: Path | None = None
    builds: Path | None = None
    store: Path | None = None
    keys: Path | None = None
    token_file: Path | None = None
    grace: Annotated[float, Field(ge=0)] | None = None
    pin_idle: Annotated[float, Field(ge=0)] | None = None
    tftp: TftpSection = Field(default_factory=TftpSection)
    http: HttpSection = Field(default_factory=HttpSection)
    fetch: FetchSection = Field(default_factory=FetchSection)
    dhcp: dict[str, DhcpValue] = Field(default_factory=dict)

    def options(self, base: Path) -> Iterator[tuple[str, str, Any]]:
        """``(key in the file, option dest, value)`` for every key the file sets; relative
        paths are taken relative to ``base``."""
        for key in ("boards", "builds", "store", "keys", "token_file"):
            value = getattr(self, key)
            if value is not None:
                yield key, key, base / value
        for key in ("grace", "pin_idle"):
            if getattr(self, key) is not None:
                yield key, key, getattr(self, key)
        sections: tuple[tuple[str, BaseModel, dict[str, str]], ...] = (
            ("tftp", self.tftp, {"addr": "tftp_addr", "port": "tftp_port"}),
            (
                "http",
                self.http,
                {"addr": "http_addr", "port": "http_port", "timeout": "http_timeout"},
            ),
            ("fetch", self.fetch, {"allow": "allow_url"}),
        )
        for name, section, dests in sections:
            for key, value in section.model_dump(exclude_none=True).items():
                if name == "http" and key == "enabled":
                    if not value:
                        yield "http.enabled", "no_http", True
                    continue
                default = key if name != "fetch" else f"fetch_{key}"
                yield f"{name}.{key}", dests.get(key, default), value
        for key, value in self.dhcp.items():
            # ``--dhcp INTERFACE`` is the one DHCP option not spelt --dhcp-<key>.
            dest = "dhcp" if key == "interface" else "dhcp_" + key.replace("-", "_")
            yield f"dhcp.{key}", dest, value


def _describe(err: ValidationError) -> str:
    """The first problem as ``key: problem``, in the file's own key names."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    msg = str(first["msg"]).removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "is not a setting (see docs/farm.md for the keys)"
    return f"{loc}: {msg}" if loc else msg


def load_config_file(path: Path) -> ConfigFile:
    """Parse and validate the file; ``ConfigFileError`` naming file, key and problem."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ConfigFileError(f"{path}: not valid TOML: {err}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigFileError(f"{path}: cannot read: {err}") from None
    except (ValueError, RecursionError) as err:
        raise ConfigFileError(f"{path}: not valid TOML: {str(err).split(';', 1)[0]}") from None
    try:
        return ConfigFile.model_validate(data)
    except ValidationError as err:
        raise ConfigFileError(f"{path}: {_describe(err)}") from None


class Default:
    """An option's default, wrapped with its action, so that ``resolve`` can tell it from a
    value the command line gave (which may equal the default)."""

    def __init__(self, value: object, action: argparse.Action) -> None:
        self.value = value
        self.action = action

    def __repr__(self) -> str:
        return repr(self.value)


def unwrapped(value: Any) -> Any:
    """An option's value, whether ``track_defaults`` wrapped it or not."""
    return value.value if isinstance(value, Default) else value


# Actions that build their value from the default in place: their defaults stay unwrapped, and
# the command line used them when their value is not ``None``.
_IN_PLACE = (argparse._AppendAction, argparse._ExtendAction, argparse._CountAction)


def track_defaults(parser: argparse.ArgumentParser) -> None:
    """Wrap the defaults of ``parser``'s options in ``Default``; call it after the last
    ``add_argument``. ``resolve`` unwraps them again."""
    for action in parser._actions:
        plain = not isinstance(action, _IN_PLACE) and not isinstance(action.default, Default)
        if action.option_strings and action.default is not argparse.SUPPRESS and plain:
            action.default = Default(action.default, action)


def _converted(action: argparse.Action, value: Any, where: str) -> Any:
    """A value of the file as the option's own ``type`` and ``choices`` take it."""
    values = value if isinstance(value, list) else [value]
    out = []
    for v in values:
        if isinstance(v, str) and callable(action.type):
            try:
                v = action.type(v)
            except (ValueError, TypeError, argparse.ArgumentTypeError) as err:
                raise ConfigFileError(f"{where}: {err}") from None
        if action.nargs == 0 and not isinstance(v, bool):  # --dhcp-proxy and the like
            raise ConfigFileError(f"{where}: {v!r} is not true or false")
        if action.choices is not None and v not in action.choices:
            choices = ", ".join(map(str, action.choices))
            raise ConfigFileError(f"{where}: {v!r} is not one of {choices}")
        out.append(v)
    return out if isinstance(value, list) else out[0]


def resolve(
    args: argparse.Namespace, config: ConfigFile | None = None, path: Path | None = None
) -> None:
    """Settle every option in ``args``: the command line's value, else the file's, else the
    default (``track_defaults``)."""
    if config is not None and path is not None:
        for key, dest, value in config.options(path.parent):
            where = f"{path}: {key}"
            if not hasattr(args, dest):
                if key.startswith("dhcp."):
                    known = sorted(
                        "interface" if d == "dhcp" else d.removeprefix("dhcp_")
                        for d in vars(args)
                        if d == "dhcp" or d.startswith("dhcp_")
                    )
                    offer = f"known: {', '.join(known)}" if known else "this overrided has none"
                    raise ConfigFileError(f"{where}: is not a DHCP setting ({offer})")
                raise ConfigFileError(f"{where}: is not a setting of overrided serve")
            current = getattr(args, dest)
            if isinstance(current, Default):
                setattr(args, dest, _converted(current.action, value, where))
            elif current is None:  # an in-place option (--allow-url) the command line left out
                setattr(args, dest, value or None)
    for dest, value in vars(args).items():
        if isinstance(value, Default):
            setattr(args, dest, value.value)
