"""iPXE override description: a script served over HTTP at ``boot/<board>.ipxe``.

iPXE cannot boot a FIT; it loads a plain kernel (EFI stub or bzImage) and initrds. Facts of the
script language this renderer relies on (iPXE ``src/core/exec.c``, ``src/image/script.c``):

* a script starts with the line ``#!ipxe``;
* a command line is split at whitespace only: there is no quoting, so no argument may contain a
  space; a token that starts with ``#`` starts a comment; ``&&``, ``||`` and ``;`` separate
  commands; ``${name}`` is expanded from settings, so a literal ``${`` cannot be written;
* ``kernel [--name <name>] <uri> [<args>...]`` fetches and selects the kernel, the rest of
  the line becoming its command line; ``initrd [--name <name>] <uri>`` fetches an initrd;
  ``boot`` runs the selected kernel. An EFI-stub Linux finds the initrd named by
  ``initrd=<name>`` on its command line.
"""

from __future__ import annotations

from urllib.parse import quote

from overrided.clients import Artifacts, register
from overrided.errors import OverridedError

INITRD_NAME = "initrd"


class IpxeClientError(OverridedError):
    """A board's artifacts cannot be described for iPXE; the message names board and field."""


def script_name(artifacts: Artifacts) -> str:
    """The served name of the board's iPXE script."""
    return f"boot/{artifacts.board}.ipxe"


def artifact_url(http_base: str, name: str) -> str:
    """The HTTP URL of a served name (each path segment percent-encoded)."""
    return http_base.rstrip("/") + "/" + quote(name, safe="/")


def _check_arg(board: str, field: str, value: str) -> str:
    if "${" in value or value.startswith("#") or value in ("&&", "||", ";"):
        raise IpxeClientError(f"{board}: {field}: {value!r} cannot be written in an iPXE script")
    return value


def _one_line(text: str) -> str:
    return " ".join(text.split())


def script(artifacts: Artifacts) -> str:
    """The iPXE script text: kernel with its command line, initrd, boot."""
    b = artifacts.board
    if not artifacts.http_base:
        raise IpxeClientError(f"{b}: no HTTP address is known for iPXE URLs")
    if not artifacts.kernel:
        raise IpxeClientError(f"{b}: iPXE needs a plain kernel; the board has only a FIT")
    base = artifacts.http_base
    args: list[str] = []
    if artifacts.initrd:
        args.append(f"initrd={INITRD_NAME}")
    for name, value in artifacts.bootargs.items():
        args.extend(_check_arg(b, f"bootargs.{name}", a) for a in value.split())
    lines = [
        "#!ipxe",
        f"# overrided: {b}: {_one_line(artifacts.provenance)}",
        "kernel " + " ".join([artifact_url(base, artifacts.kernel), *args]),
    ]
    if artifacts.initrd:
        lines.append(f"initrd --name {INITRD_NAME} {artifact_url(base, artifacts.initrd)}")
    lines.append("boot")
    return "\n".join(lines) + "\n"


@register("ipxe", plain_kernel=True)
def render(artifacts: Artifacts) -> dict[str, bytes]:
    """``{boot/<board>.ipxe: script}``."""
    return {script_name(artifacts): script(artifacts).encode()}
