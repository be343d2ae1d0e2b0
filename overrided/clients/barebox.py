"""The barebox devboot script: ``<user>-devboot-<hostname>``, sourced by barebox's ``devboot``.

What barebox does with it (``defaultenv/defaultenv-2-base/bin/devboot``): ``ifup -a1``, ``cd``
into ``global.net.fetchdir`` (the TFTP mount), ``source`` the script, then for each of
``devboot_image``, ``devboot_oftree`` and ``devboot_initrd`` that the script *set* (tested with
``[[ -v … ]]``, so an unset variable leaves that part of the boot entry alone, while an empty
one is an override too) pass ``-o bootm.image=…`` / ``bootm.oftree`` / ``bootm.initrd`` to
``boot``. Names are relative to the fetch directory. The override rules
(``common/bootm-overrides.c``):

* ``bootm.image``: a FIT is re-opened and kernel, device tree and initrd all come from it;
  a plain kernel replaces only the kernel. Only the parts the FIT's configuration has are
  taken (``common/bootm-fit.c``): its **first** ``fdt`` (overlays listed after it are not
  applied) and all its ``ramdisk`` images, chained; a FIT without a ramdisk or fdt leaves the
  entry's initrd or DTB in place.
* ``bootm.oftree``: colon list, base DTB then overlays; a leading colon keeps the entry's DTB
  and only applies overlays; the empty string drops the entry's DTB (barebox passes its own).
* ``bootm.initrd``: colon list of CPIOs concatenated; a leading colon appends to the entry's.
* With signed images forced (``bootm_signed_images_are_forced()``) all overrides are ignored.

``devboot_image`` names ``<user>-linux-<hostname>``, the name barebox's ``net`` boot entry
(``defaultenv/defaultenv-2-base/boot/net``) opens as ``global.bootm.image``, rather than the
versioned FIT: barebox keeps a FIT open by its canonical path (``fit_open`` in
``common/image-fit.c``) while the entry's parts refer to it, so ``devboot net`` overriding the
image with the same file re-uses the FIT it already read instead of fetching it a second time.
That name follows every rebuild; the service answers a client all of a board's stable names
from the snapshot of its script read (``pins.py``), so the FIT still matches the script.
"""

from __future__ import annotations

import re

from overrided.clients import Artifacts, register
from overrided.errors import OverridedError

# Names that become parts of served file names (``<user>-devboot-<hostname>``): barebox builds
# these names in its shell, so keep them to characters that need no quoting anywhere.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
NAME_RULE = "letters, digits, '.', '_', '+', '-'"
# barebox global variable names: ``global linux.bootargs.dyn.<name>``.
VARIABLE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
# Inside barebox hush double quotes, ``$``, backquote, ``\`` and ``"`` keep a special meaning and
# a newline ends the command; we refuse them rather than rely on escaping rules that differ
# between shells (barebox ``common/hush.c`` is not POSIX sh).
_UNSAFE_VALUE = re.compile(r'["$`\\\x00-\x1f\x7f]')
# The roles of the unversioned names: the devboot script, then what the ``net`` entry opens.
ROLES = ("devboot", "linux", "oftree", "initramfs")
# ``<user>-<role>-<hostname>``, parsed for boards known only by the names they ask for. A user
# with a '-' could not be told apart from the role word, so the user part here has none.
_STABLE = re.compile(
    r"(?P<user>[A-Za-z0-9][A-Za-z0-9._+]*?)-(?P<role>" + "|".join(ROLES) + r")-"
    r"(?P<host>[A-Za-z0-9][A-Za-z0-9._+-]*)"
)


def unsafe_value_reason(value: str) -> str | None:
    """Why ``value`` cannot sit inside barebox double quotes, or ``None`` if it can."""
    m = _UNSAFE_VALUE.search(value)
    if m is None:
        return None
    return f"must not contain {m.group()!r} (barebox shell quoting)"


def default_hostname(compatible: str) -> str:
    """barebox's default ``global.hostname``: the compatible without its vendor prefix."""
    return compatible.split(",", 1)[-1]


def parse_stable_name(name: str) -> tuple[str, str, str] | None:
    """``(user, role, hostname)`` of an unversioned barebox name such as
    ``afa-devboot-rock3a``; ``None`` for any other name."""
    m = _STABLE.fullmatch(name)
    if m is None:
        return None
    return m.group("user"), m.group("role"), m.group("host")


class ScriptError(OverridedError):
    """A value that cannot be written into a barebox script safely."""


def script_name(user: str, hostname: str) -> str:
    """The name barebox's ``devboot`` sources: ``<user>-devboot-<hostname>``."""
    return f"{user}-devboot-{hostname}"


def net_name(user: str, role: str, hostname: str) -> str:
    """A name barebox's ``net`` boot entry opens: ``<user>-<role>-<hostname>`` for ``linux``,
    ``oftree`` and ``initramfs``."""
    return f"{user}-{role}-{hostname}"


def stable_names(user: str, hostname: str) -> tuple[str, ...]:
    """Every unversioned name barebox asks for: the devboot script, then the ``boot net``
    names. One board's reads of these are answered from one snapshot per client."""
    return (
        script_name(user, hostname),
        *(net_name(user, role, hostname) for role in ("linux", "oftree", "initramfs")),
    )


def quote(value: str, what: str) -> str:
    """``value`` in double quotes for barebox hush; refuse what hush would still interpret."""
    reason = unsafe_value_reason(value)
    if reason:
        raise ScriptError(f"{what}: {reason}")
    return f'"{value}"'


def _comment(text: str) -> str:
    # A comment runs to the end of the line: keep provenance on one line whatever it holds.
    return "# " + " ".join(text.split())


def overrides(a: Artifacts) -> dict[str, str]:
    """The devboot variables to set, in order; a variable that is absent is left alone."""
    out: dict[str, str] = {}
    if (a.image_mode == "fit" and a.fit) or (a.image_mode == "kernel" and a.kernel):
        # The boot net name, which carries the FIT or the kernel the image mode asks for: the
        # `net` entry opened it already, and barebox re-uses a FIT it holds open (see above).
        out["devboot_image"] = net_name(a.user, "linux", a.hostname)

    # The build's device tree reaches the kernel when the board names it, or when a FIT
    # override brings it (barebox takes a FIT's first fdt over the entry's, "keep" included).
    build_dt = a.oftree_mode == "fit" or (a.image_mode == "fit" and a.oftree_mode != "board")
    # A decomposed configuration's overlays (make_fit.py -D) belong on the build's base DTB:
    # barebox loads only the first fdt of a FIT configuration, so they are named here, first.
    listed = (a.fit_overlays if build_dt else ()) + a.overlays
    overlays = ":".join(listed)
    if a.oftree_mode == "board":
        # Empty string: drop the entry's (or FIT's) DTB, barebox passes its own device tree.
        out["devboot_oftree"] = ""
    elif a.oftree_mode == "fit" and a.image_mode != "fit" and a.oftree:
        # A plain kernel brings no DTB: name the matched configuration's DTB explicitly.
        out["devboot_oftree"] = a.oftree + (f":{overlays}" if overlays else "")
    elif overlays:
        # "keep", "overlays", or a FIT that brings its DTB: keep it, apply the overlays on top.
        out["devboot_oftree"] = f":{overlays}"

    if a.initrd and a.initrd_mode == "replace":
        out["devboot_initrd"] = a.initrd
    elif a.initrd and a.initrd_mode == "append":
        out["devboot_initrd"] = f":{a.initrd}"
    return out


def devboot_script(a: Artifacts, *, warnings: tuple[str, ...] = ()) -> str:
    """The script text: a provenance header, then only the variables the board asks for."""
    lines = [
        _comment(f"{script_name(a.user, a.hostname)}: devboot overrides for board {a.board}"),
        _comment(a.provenance),
    ]
    lines += [_comment(f"warning: {w}") for w in warnings]
    for var, value in overrides(a).items():
        if var == "devboot_image":
            # Which bytes the stable name stands for: people and logs match it to a render.
            versioned = a.fit if a.image_mode == "fit" else a.kernel
            lines.append(_comment(f"{value} is {versioned}"))
        lines.append(f"{var}={quote(value, var)}")
    for name, value in a.bootargs.items():
        lines.append(f"global linux.bootargs.dyn.{name}={quote(value, f'bootargs.{name}')}")
    return "\n".join(lines) + "\n"


@register("barebox")
def render(artifacts: Artifacts) -> dict[str, bytes]:
    """The devboot script under ``<user>-devboot-<hostname>``."""
    text = devboot_script(artifacts)
    return {script_name(artifacts.user, artifacts.hostname): text.encode()}
