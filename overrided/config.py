"""Board files (``boards/*.toml``) and service settings: declared once, validated with pydantic.

Every problem with a board file becomes one ``BoardError`` line naming the file, the field and
what is wrong (``boards/rock3a.toml: compatible: must list at least one string``), so the
service can log it, show it in the API, and go on serving the other boards.
"""

from __future__ import annotations

import re
import tomllib
from ipaddress import IPv4Address
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from overrided.clients import FORMATS, barebox
from overrided.clients.barebox import unsafe_value_reason
from overrided.errors import OverridedError

# The names and quoting rules are barebox's: ``overrided/clients/barebox.py`` owns them.
_NAME = barebox.NAME
_VAR = barebox.VARIABLE
# A field or key that error messages show as it is; others are quoted (repr).
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_.+-]+\Z")
# A MAC address as boards and labels write it: six pairs of hex digits, ":" or "-" between.
_MAC = re.compile(r"(?:[0-9A-Fa-f]{2}[:-]){5}[0-9A-Fa-f]{2}")


class BoardError(OverridedError):
    """A board file that cannot be used; ``str()`` names the file, the field and the problem."""


class Board(BaseModel):
    """One board: how barebox names it, what it matches, and what its devboot overrides."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = ""  # the file stem; set by the loader
    hostname: str = ""  # barebox global.hostname; default: first compatible without the vendor
    user: str = "none"  # barebox global.user, whose default is "none"
    arch: str = "arm64"
    compatible: list[str]
    rule: Literal["barebox", "u-boot"] = "barebox"
    build: str | None = None  # a build folder name; None = the latest build
    image: Literal["fit", "kernel"] | None = "fit"
    oftree: Literal["fit", "keep", "board"] | list[str] = "fit"
    initrd: Literal["replace", "append"] | None = "replace"
    init: str | None = None  # path of an init CPIO, relative to the board file's folder
    bootargs: dict[str, str] = Field(default_factory=dict)
    sign: str | None = None  # key name in the keys folder: sign the per-board FIT
    signed_images_forced: bool = False  # the board enforces signed images: overrides are ignored
    formats: list[str] = Field(default_factory=lambda: ["barebox"])  # clients.FORMATS
    # Network boot (docs/network.md): the board's MAC addresses (one, or a list), its fixed
    # IPv4 address for DHCP, and an NFS export to mount as the root file system.
    mac: tuple[str, ...] = ()
    ip: IPv4Address | None = None
    nfsroot: str | None = None

    @field_validator("image", "initrd", mode="before")
    @classmethod
    def _none(cls, value: object) -> object:
        # TOML has no null: "none" means "do not override this part".
        return None if value == "none" else value

    @field_validator("compatible")
    @classmethod
    def _compatible(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("must list at least one string")
        for s in value:
            if not s or any(c.isspace() for c in s):
                raise ValueError(f"{s!r} is not a compatible string")
        return value

    @field_validator("formats")
    @classmethod
    def _formats(cls, value: list[str]) -> list[str]:
        for f in value:
            if f not in FORMATS:
                raise ValueError(f"{f!r} is not a format (known: {', '.join(FORMATS)})")
        return value

    @field_validator("hostname", "user")
    @classmethod
    def _name(cls, value: str) -> str:
        if value and not _NAME.fullmatch(value):
            raise ValueError(f"{value!r} must be {barebox.NAME_RULE}")
        return value

    @field_validator("bootargs")
    @classmethod
    def _bootargs(cls, value: dict[str, str]) -> dict[str, str]:
        for key, arg in value.items():
            if not _VAR.fullmatch(key):
                raise ValueError(f"{key!r} is not a barebox variable name")
            reason = unsafe_value_reason(arg)
            if reason:
                raise ValueError(f"{key}: {reason}")
        return value

    @field_validator("oftree")
    @classmethod
    def _oftree(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list):
            if not value:
                raise ValueError("an overlay list must name at least one overlay")
            for o in value:
                if not o or ":" in o or unsafe_value_reason(o):
                    raise ValueError(f"{o!r} is not an overlay file name")
        return value

    @field_validator("mac", mode="before")
    @classmethod
    def _mac(cls, value: object) -> object:
        # One address or a list of them (a board with two ports, or a USB adapter swapped).
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list):
            return value  # pydantic says what the type should be
        out: list[str] = []
        for v in values:
            if not isinstance(v, str) or not _MAC.fullmatch(v):
                raise ValueError(f"{v!r} is not a MAC address like 52:54:00:12:34:56")
            mac = v.lower().replace("-", ":")
            if int(mac[:2], 16) & 1:
                raise ValueError(f"{v!r} is a multicast address, not a board's")
            if mac in out:
                raise ValueError(f"{v!r} is listed twice")
            out.append(mac)
        return tuple(out)

    @field_validator("ip", mode="before")
    @classmethod
    def _ip(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                addr = IPv4Address(value)
            except ValueError:
                raise ValueError(f"{value!r} is not an IPv4 address like 192.0.2.10") from None
            if addr.is_multicast or addr.is_unspecified or addr.is_loopback:
                raise ValueError(f"{value!r} cannot be a board's address")
            return addr
        return value

    @field_validator("nfsroot")
    @classmethod
    def _nfsroot(cls, value: str | None) -> str | None:
        if value is None:
            return None
        # The kernel's nfsroot=<server-ip>:<root-dir>[,<nfs-options>]
        # (Documentation/admin-guide/nfs/nfsroot.rst): it resolves no names.
        server, sep, path = value.partition(":")
        try:
            IPv4Address(server)
        except ValueError:
            sep = ""
        if not sep or not path.startswith("/") or any(c.isspace() for c in value):
            raise ValueError(f"{value!r} is not '<server IPv4>:/<export path>[,<options>]'")
        reason = unsafe_value_reason(value)
        if reason:
            raise ValueError(reason)
        return value

    @model_validator(mode="after")
    def _default_hostname(self) -> Board:
        if not self.hostname:
            hostname = barebox.default_hostname(self.compatible[0])
            if not _NAME.fullmatch(hostname):
                raise ValueError(f"hostname: cannot derive one from {self.compatible[0]!r}")
            object.__setattr__(self, "hostname", hostname)
        if not self.formats:
            raise ValueError("formats: must list at least one format")
        if self.nfsroot is not None and NFSROOT_ARG in self.bootargs:
            raise ValueError(f"bootargs.{NFSROOT_ARG}: is set by nfsroot; keep one of them")
        return self

    @property
    def overlays(self) -> tuple[str, ...]:
        """Overlay files to apply on top of the device tree, if ``oftree`` lists them."""
        return tuple(self.oftree) if isinstance(self.oftree, list) else ()

    @property
    def kernel_args(self) -> dict[str, str]:
        """``bootargs`` and, with ``nfsroot``, the NFS root arguments: what every format puts
        on the kernel's command line (barebox: one ``linux.bootargs.dyn.<name>`` each)."""
        if self.nfsroot is None:
            return dict(self.bootargs)
        return {**self.bootargs, NFSROOT_ARG: nfsroot_args(self.nfsroot)}


# The name of the NFS root arguments among a board's kernel arguments.
NFSROOT_ARG = "nfsroot"


def nfsroot_args(export: str) -> str:
    """The kernel arguments that mount ``export`` (``server:/path``) as the root file system,
    with the address from DHCP (``ip=dhcp``; the kernel's own client, ``CONFIG_IP_PNP``)."""
    return f"root=/dev/nfs nfsroot={export} ip=dhcp rw"


def display_path(path: Path) -> str:
    """``boards/rock3a.toml``: the file with its folder, as error messages name it."""
    return display_name(path.parent.name, path.name)


def display_name(folder: str, name: str) -> str:
    """``display_path`` of the file ``name`` in a folder named ``folder``."""
    return f"{folder}/{name}" if folder else name


def _describe(err: ValidationError) -> str:
    """The first problem of a pydantic error as ``field: problem``."""
    first = err.errors()[0]
    # A key may hold any character, newlines included: those are quoted so the message stays
    # one line.
    loc = ".".join(
        p if isinstance(p, str) and _PLAIN_KEY.match(p) else repr(p) for p in first["loc"]
    )
    msg = first["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    if first["type"] == "missing":
        msg = "is required"
    elif first["type"] == "extra_forbidden":
        msg = "is not a board field"
    return f"{loc}: {msg}" if loc else msg


def load_board(path: Path) -> Board:
    """Parse and validate one board file; raise ``BoardError`` naming file, field and problem."""
    where = display_path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise BoardError(f"{where}: not valid TOML: {err}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise BoardError(f"{where}: cannot read: {err}") from None
    except ValueError as err:
        # tomllib converts with int(): past 4300 digits Python refuses (CVE-2020-10735). The
        # advice after ";" (sys.set_int_max_str_digits) is for programmers, not board authors.
        reason = str(err).split(";", 1)[0]
        raise BoardError(f"{where}: not valid TOML: a value cannot be read ({reason})") from None
    except RecursionError:
        # tomllib recurses once per level of nested arrays and inline tables.
        raise BoardError(
            f"{where}: not valid TOML: arrays or inline tables nested too deeply"
        ) from None
    if "name" in data:
        raise BoardError(f"{where}: name: is the file name, do not set it")
    try:
        return Board.model_validate({**data, "name": path.stem})
    except ValidationError as err:
        raise BoardError(f"{where}: {_describe(err)}") from None


def load_boards(folder: Path) -> tuple[list[Board], dict[str, str]]:
    """Every ``*.toml`` board in ``folder``: the valid boards, and file → error for the others.

    Two boards claiming the same ``<user>-…-<hostname>`` names would fight over them, so the
    later file (by name) is refused with an error naming the earlier one; so is a board that
    claims another's MAC or IP address.
    """
    boards: list[Board] = []
    errors: dict[str, str] = {}
    claimed: dict[tuple[str, str], str] = {}
    addresses: dict[str, str] = {}  # MAC or IP → the file that has it
    for path in sorted(folder.glob("*.toml")) if folder.is_dir() else []:
        if path.name.startswith("."):
            continue
        try:
            board = load_board(path)
        except BoardError as err:
            errors[display_path(path)] = str(err)
            continue
        key = (board.user, board.hostname)
        if key in claimed:
            errors[display_path(path)] = (
                f"{display_path(path)}: hostname: {board.user}/{board.hostname} is already "
                f"used by {claimed[key]}"
            )
            continue
        clash = _address_clash(board, display_path(path), addresses)
        if clash:
            errors[display_path(path)] = f"{display_path(path)}: {clash}"
            continue
        claimed[key] = display_path(path)
        boards.append(board)
    return boards, errors


def _address_clash(board: Board, where: str, addresses: dict[str, str]) -> str | None:
    """``field: why`` if ``board`` claims a MAC or IP address an earlier board has; else claim
    them in ``addresses`` (address → the file that has it). A DHCP server must know one board
    per MAC, and hand one address to one board."""
    mine = [("mac", m) for m in board.mac] + ([("ip", str(board.ip))] if board.ip else [])
    for field, value in mine:
        if value in addresses:
            return f"{field}: {value} is already used by {addresses[value]}"
    addresses.update((value, where) for _, value in mine)
    return None


class Settings(BaseModel):
    """What ``overrided serve`` runs with; the CLI fills it from its options."""

    model_config = ConfigDict(extra="forbid")

    boards_dir: Path = Path("boards")
    builds_dir: Path = Path("kernel-builds")
    store_dir: Path = Path(".overrided")
    keys_dir: Path = Path("keys")
    tftp_addr: str = "0.0.0.0"
    tftp_port: Annotated[int, Field(ge=0, le=65535)] = 6969
    http_addr: str = "0.0.0.0"
    http_port: Annotated[int, Field(ge=0, le=65535)] | None = 8080  # None: no HTTP server
    public_url: str | None = None
    token: str | None = None
    max_upload: int = 2 << 30
    grace: Annotated[float, Field(ge=0)] = (
        600.0  # seconds a blob stays served after leaving the catalog
    )
    pin_idle: Annotated[float, Field(ge=0)] = (
        60.0  # seconds a client's pin of a board's names lasts without reads (0: no pins)
    )
    quiet: Annotated[float, Field(ge=0)] = (
        0.05  # a build's files must be unchanged this long before use
    )
    debounce_ms: Annotated[int, Field(ge=1)] = (
        # watchfiles step: changes closer than this are one batch, seen 1-2 steps after the
        # last one. Files a process still writes wait for it (writers.py), so a short step
        # costs a few more refreshes during a `make`, and saves tens of ms on every landing.
        10
    )
    max_blksize: int = 1468
    max_windowsize: int = 64
    dhcp_interface: str | None = None  # serve DHCP there with dnsmasq (docs/network.md)
    dhcp_range: tuple[IPv4Address, IPv4Address] | None = None  # addresses for unknown clients
    dhcp_proxy: bool = False  # answer PXE clients only, beside another DHCP server
