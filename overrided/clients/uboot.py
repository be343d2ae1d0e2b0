"""U-Boot override descriptions: a pxelinux entry for ``pxe get; pxe boot`` and a ``boot.scr``.

Both name only served, versioned artifacts, so a board that fetched its description before a
rebuild still gets the matching FIT and initrd. Facts from U-Boot (``cmd/pxe.c``,
``boot/pxe_utils.c``, ``include/image.h``), checked against Debian's U-Boot 2023.01:

* ``pxe get`` tries, under ``pxelinux.cfg/`` (relative to the directory of ``$bootfile``):
  ``$pxeuuid`` if set, ``01-<ethaddr, lower case, dashes>``, the IPv4 address in upper-case hex
  shortened one digit at a time, then ``default-<arch>-<soc>``, ``default-<arch>``, ``default``.
  A board without a known MAC address is pointed at its board-named file with
  ``setenv pxeuuid <board>``.
* In an entry, ``kernel <file>#<conf>`` boots configuration ``<conf>`` of a FIT. The initrd is
  loaded to ``$ramdisk_addr_r`` and given to ``bootm``. The DT passed is, in order: the entry's
  ``fdt`` file when ``$fdt_addr_r`` is set, else ``$fdt_addr``, else ``$fdtcontroladdr``; only
  when none applies does ``bootm`` take the FIT configuration's own ``fdt``.
* ``append`` replaces ``bootargs``; ``${var}`` in it is expanded by U-Boot.
* ``default <label>`` boots that label without asking, but an entry with ``menu title`` or
  ``menu label`` lines makes U-Boot 2023.01 show the menu and wait at ``Enter choice:``.
* A legacy script image is a 64-byte big-endian header (magic ``0x27051956``, header CRC32,
  time, size, load, entry, data CRC32, os, arch, type, compression, 32-byte name) followed by
  a table of 32-bit big-endian lengths ended by 0 and then the script; ``source`` runs the
  first (here: only) part.
"""

from __future__ import annotations

import struct
import zlib

from overrided.clients import Artifacts, register
from overrided.errors import OverridedError

PXE_DIR = "pxelinux.cfg"
BOOTSCR_SUFFIX = ".scr"

# include/image.h: legacy header layout and the enum values we write.
LEGACY_MAGIC = 0x27051956
LEGACY_HEADER = struct.Struct(">IIIIIIIBBBB32s")  # 64 bytes
IH_OS_LINUX = 5
IH_TYPE_SCRIPT = 6
IH_COMP_NONE = 0
IH_NMLEN = 32
IH_ARCH = {"arm": 2, "x86": 3, "mips": 5, "powerpc": 7, "arm64": 22, "x86_64": 24, "riscv": 26}

# Where boot.scr loads things, unless the board's environment names other addresses: the
# board-agnostic U-Boot variables; boards whose kernel_addr_r overlaps the kernel's final
# place (qemu_arm64: FIT at 0x40400000, kernel moved to 0x40000000) set overrided_*_addr.
FIT_ADDR_VAR = "overrided_fit_addr"
KERNEL_ADDR_VAR = "overrided_kernel_addr"
INITRD_ADDR_VAR = "overrided_initrd_addr"
FDT_ADDR_VAR = "overrided_fdt_addr"
OVERLAY_ADDR_VAR = "overrided_overlay_addr"
ADDR_DEFAULTS = {
    FIT_ADDR_VAR: "kernel_addr_r",
    KERNEL_ADDR_VAR: "kernel_addr_r",
    INITRD_ADDR_VAR: "ramdisk_addr_r",
    FDT_ADDR_VAR: "fdt_addr_r",
    OVERLAY_ADDR_VAR: "fdtoverlay_addr_r",
}


class UBootClientError(OverridedError):
    """A board's artifacts cannot be described for U-Boot; the message names board and field."""


def pxe_mac_name(mac: str) -> str:
    """``pxelinux.cfg/01-aa-bb-...`` for a MAC address in any common notation."""
    digits = mac.replace(":", "").replace("-", "").replace(".", "").lower()
    if len(digits) != 12 or any(c not in "0123456789abcdef" for c in digits):
        raise UBootClientError(f"mac: {mac!r} is not a 48-bit MAC address")
    pairs = "-".join(digits[i : i + 2] for i in range(0, 12, 2))
    return f"{PXE_DIR}/01-{pairs}"


def pxe_name(artifacts: Artifacts) -> str:
    """The served name of the board's pxelinux entry: by MAC if known, else by board name."""
    if artifacts.mac:
        return pxe_mac_name(artifacts.mac)
    return f"{PXE_DIR}/{artifacts.board}"


def bootscr_name(artifacts: Artifacts) -> str:
    """The served name of the board's boot script."""
    return f"{artifacts.board}{BOOTSCR_SUFFIX}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _bootargs(artifacts: Artifacts) -> str:
    return " ".join(v for v in artifacts.bootargs.values() if v)


def _check_name(board: str, field: str, name: str) -> str:
    # pxe_utils reads each value up to the end of the line; U-Boot's TFTP path limit is 127.
    if not name or any(c.isspace() for c in name) or "#" in name:
        raise UBootClientError(f"{board}: {field}: {name!r} cannot be named in a U-Boot entry")
    if len(name) > 127:
        raise UBootClientError(f"{board}: {field}: {name!r} is longer than U-Boot's 127")
    return name


def _fit_or_kernel(artifacts: Artifacts) -> tuple[str, str | None]:
    """(file to load as kernel, FIT configuration or None)."""
    b = artifacts.board
    if artifacts.image_mode == "fit" and artifacts.fit:
        conf = artifacts.configuration
        if conf is not None and (not conf or any(c.isspace() or c == "#" for c in conf)):
            raise UBootClientError(f"{b}: configuration: {conf!r} cannot follow '#'")
        return _check_name(b, "fit", artifacts.fit), conf
    if artifacts.kernel:
        return _check_name(b, "kernel", artifacts.kernel), None
    if artifacts.fit:
        return _check_name(b, "fit", artifacts.fit), artifacts.configuration
    raise UBootClientError(f"{b}: neither a FIT nor a kernel to boot")


def pxe_entry(artifacts: Artifacts) -> str:
    """The pxelinux entry text (syslinux grammar as U-Boot's ``pxe_utils`` parses it)."""
    b = artifacts.board
    kernel, conf = _fit_or_kernel(artifacts)
    # No "menu title"/"menu label": with them U-Boot 2023.01 shows the menu and waits at
    # "Enter choice:" (seen in QEMU); a bare "default" boots that label at once.
    lines = [
        f"# overrided: {b}: {_one_line(artifacts.provenance)}",
        "default overrided",
        "",
        "label overrided",
        f"    kernel {kernel}" + (f"#{conf}" if conf else ""),
    ]
    if artifacts.oftree and artifacts.oftree_mode != "keep":
        lines.append(f"    fdt {_check_name(b, 'oftree', artifacts.oftree)}")
    if artifacts.overlays:
        names = [_check_name(b, "overlays", o) for o in artifacts.overlays]
        lines.append(f"    fdtoverlays {' '.join(names)}")
    if artifacts.initrd:
        lines.append(f"    initrd {_check_name(b, 'initrd', artifacts.initrd)}")
    bootargs = _bootargs(artifacts)
    if bootargs:
        if "\n" in bootargs:
            raise UBootClientError(f"{b}: bootargs: must be one line")
        lines.append(f"    append {bootargs}")
    return "\n".join(lines) + "\n"


@register("pxe")
def render_pxe(artifacts: Artifacts) -> dict[str, bytes]:
    """``{pxelinux.cfg/01-<mac> or pxelinux.cfg/<board>: entry}`` for ``pxe get; pxe boot``."""
    return {pxe_name(artifacts): pxe_entry(artifacts).encode()}


def _quote(board: str, field: str, value: str) -> str:
    # hush: nothing is expanded inside single quotes, and a single quote cannot appear there.
    if "'" in value or "\n" in value:
        raise UBootClientError(f"{board}: {field}: {value!r} has a quote or newline")
    return f"'{value}'"


def _addr(var: str) -> str:
    return "${" + var + "}"


def boot_script(artifacts: Artifacts) -> str:
    """The hush script ``boot.scr`` carries: load the board's artifacts over TFTP and boot.

    Run after the network is up (``$serverip`` set), as the ``source`` of the script itself is.
    Each load address is ``$overrided_*_addr`` if the board's environment sets it, else the
    usual ``$kernel_addr_r``/``$ramdisk_addr_r``/``$fdt_addr_r``/``$fdtoverlay_addr_r``.
    """
    b = artifacts.board
    kernel, conf = _fit_or_kernel(artifacts)
    fit = kernel == artifacts.fit
    # Provenance is free text (it quotes compatibles): shown, never parsed, so a single
    # quote, which cannot sit inside hush single quotes, becomes a double one.
    about = f"overrided: {b}: {_one_line(artifacts.provenance)}".replace("'", '"')
    lines = [f"# {about}", f"echo {_quote(b, 'provenance', about)}"]
    needed = [FIT_ADDR_VAR if fit else KERNEL_ADDR_VAR]
    if artifacts.initrd:
        needed.append(INITRD_ADDR_VAR)
    fdt = artifacts.oftree if artifacts.oftree and artifacts.oftree_mode != "keep" else None
    if not fit and fdt:
        needed.append(FDT_ADDR_VAR)
    if not fit and artifacts.overlays:
        needed.append(OVERLAY_ADDR_VAR)
    for var in needed:
        lines.append(f'test -n "{_addr(var)}" || setenv {var} {_addr(ADDR_DEFAULTS[var])}')
    bootargs = _bootargs(artifacts)
    if bootargs:
        lines.append(f"setenv bootargs {_quote(b, 'bootargs', bootargs)}")
    steps: list[str] = []
    load_addr = _addr(needed[0])
    steps.append(f"tftpboot {load_addr} {kernel}")
    if not fit and fdt:
        steps.append(f"tftpboot {_addr(FDT_ADDR_VAR)} {_check_name(b, 'oftree', fdt)}")
        if artifacts.overlays:
            steps.append(f"fdt addr {_addr(FDT_ADDR_VAR)}")
            steps.append("fdt resize 65536")
            for o in artifacts.overlays:
                steps.append(f"tftpboot {_addr(OVERLAY_ADDR_VAR)} {_check_name(b, 'overlays', o)}")
                steps.append(f"fdt apply {_addr(OVERLAY_ADDR_VAR)}")
    rd = "-"
    if artifacts.initrd:
        # Loaded last, so that $filesize (expanded when bootm runs) is the initrd's size.
        steps.append(
            f"tftpboot {_addr(INITRD_ADDR_VAR)} {_check_name(b, 'initrd', artifacts.initrd)}"
        )
        rd = f"{_addr(INITRD_ADDR_VAR)}:${{filesize}}"
    if fit:
        target = load_addr + (f"#{conf}" if conf else "")
        # With a FIT the configuration's own fdt is used: no third argument.
        steps.append(f"bootm {target} {rd}" if rd != "-" else f"bootm {target}")
    else:
        boot = "booti" if artifacts.arch == "arm64" else "bootz"
        fdt_arg = _addr(FDT_ADDR_VAR) if fdt else "${fdtcontroladdr}"
        steps.append(f"{boot} {load_addr} {rd} {fdt_arg}")
    lines.append(" && ".join(steps))
    lines.append(f"echo 'overrided: {b}: boot failed'")
    return "\n".join(lines) + "\n"


def legacy_script_image(script: str, *, name: str, arch: str) -> bytes:
    """Wrap ``script`` into a U-Boot legacy image of type script (what ``mkimage -T script`` does).

    The time stamp is 0, so equal scripts give equal bytes (blobs are content-addressed).
    """
    text = script.encode()
    data = struct.pack(">II", len(text), 0) + text
    arch_id = IH_ARCH.get(arch)
    if arch_id is None:
        raise UBootClientError(f"arch: {arch!r} has no U-Boot image architecture here")
    fields = (
        LEGACY_MAGIC,
        0,  # header CRC, computed over the header with this field zero
        0,  # time
        len(data),
        0,  # load
        0,  # entry
        zlib.crc32(data),
        IH_OS_LINUX,
        arch_id,
        IH_TYPE_SCRIPT,
        IH_COMP_NONE,
        name.encode()[:IH_NMLEN],
    )
    header = LEGACY_HEADER.pack(*fields)
    hcrc = zlib.crc32(header)
    return LEGACY_HEADER.pack(fields[0], hcrc, *fields[2:]) + data


@register("bootscr")
def render_bootscr(artifacts: Artifacts) -> dict[str, bytes]:
    """``{<board>.scr: legacy script image}`` for ``tftpboot ${loadaddr} <board>.scr; source``."""
    script = boot_script(artifacts)
    image = legacy_script_image(script, name=f"overrided {artifacts.board}", arch=artifacts.arch)
    return {bootscr_name(artifacts): image}
