"""Override descriptions per bootloader: each module renders a board's ``Artifacts`` into files.

A renderer is a pure function ``render(artifacts) -> dict[served name, bytes]``, registered under
the name board files list in ``formats`` with ``@register(name)`` where it is defined: adding a
format is one module here plus its import at the end of this file. The service core
builds ``Artifacts`` after it has published a board's FIT/kernel/DTB/initrd blobs under versioned
names, calls the renderers the board asks for, and publishes their output in the same catalog
swap, so a description never names an artifact from another build. One exception: the barebox
script names barebox's own ``<user>-linux-<hostname>`` for the image (``barebox.py`` says why),
a stable name that the service answers from the script's snapshot to the client that read it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class Artifacts:
    """What a board's descriptions may refer to. Every name is a served, versioned name
    (the barebox script also derives barebox's stable names from ``user`` and ``hostname``)."""

    board: str  # board name (file stem, or hostname for a board known only by hostname)
    hostname: str  # barebox global.hostname
    user: str  # barebox global.user ("none" by default)
    arch: str  # "arm64", "arm", ...
    provenance: str  # one line: build, configuration, match reason, render time
    fit: str | None = None  # per-board FIT holding only the matched configuration (its default)
    configuration: str | None = None  # that configuration's unit name inside the FIT
    kernel: str | None = None  # plain kernel image
    oftree: str | None = None  # the board's DTB, from the matched configuration
    overlays: tuple[str, ...] = ()  # DT overlays to apply on top
    # overlays the FIT configuration lists after its base DTB (make_fit.py -D); U-Boot applies
    # them from the FIT, barebox loads only the first fdt and needs them named
    fit_overlays: tuple[str, ...] = ()
    initrd: str | None = None  # concatenated initrd (modules CPIO + init CPIO)
    # barebox override modes (docs/design.md, "barebox"): how each part replaces or joins the boot
    # entry's own
    image_mode: Literal["fit", "kernel"] | None = "fit"
    oftree_mode: Literal["fit", "keep", "board", "overlays"] | None = "fit"
    initrd_mode: Literal["replace", "append"] | None = "replace"
    bootargs: dict[str, str] = field(default_factory=dict)  # name → value (linux.bootargs.dyn.*)
    mac: str | None = None  # board MAC address, "52:54:00:12:34:56", for pxelinux.cfg/01-<mac>
    http_base: str | None = None  # e.g. "http://192.0.2.1:8080/", for HTTP-loading clients


Renderer = Callable[[Artifacts], dict[str, bytes]]


@dataclass(frozen=True)
class Format:
    """An override format a board file may list in ``formats``."""

    name: str
    render: Renderer
    plain_kernel: bool = False  # also needs the kernel outside the FIT (iPXE boots no FIT)


# Every format, by the name board files use; each client module registers its own.
FORMATS: dict[str, Format] = {}


def register(name: str, *, plain_kernel: bool = False) -> Callable[[Renderer], Renderer]:
    """Decorator: make ``render`` the renderer of format ``name``."""

    def add(render: Renderer) -> Renderer:
        if name in FORMATS:
            raise ValueError(f"format {name!r} is registered twice")
        FORMATS[name] = Format(name, render, plain_kernel)
        return render

    return add


# The formats that ship with overrided register themselves when their modules load.
from overrided.clients import barebox, ipxe, uboot  # noqa: E402, F401
