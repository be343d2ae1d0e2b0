"""`overrided fit ls | match | trim | build`: the FIT core from the command line."""

from __future__ import annotations

import argparse
import importlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from overrided.fit import RULES, Fit, FitError, Match, build_fit, find_dtbs, match, read_dtb, trim
from overrided.fit.build import COMPRESSIONS
from overrided.fit.model import decode_list

# Modules adding more `fit` subcommands: each has register_fit(fit_subparsers).
FIT_EXTENSIONS: tuple[str, ...] = ("overrided.commands.fit_sign",)


def register(subparsers: Any) -> None:
    """Add `fit` and its subcommands to the top-level parser."""
    fit = subparsers.add_parser("fit", help="inspect, match, trim and build FIT images")
    sub = fit.add_subparsers(dest="fit_command", metavar="SUBCOMMAND", required=True)

    ls = sub.add_parser("ls", help="list configurations: compatible, description, images, sizes")
    ls.add_argument("file", type=Path, help="FIT file")
    ls.set_defaults(func=cmd_ls)

    m = sub.add_parser("match", help="which configuration a board boots, and why")
    m.add_argument("file", type=Path, help="FIT file")
    _board_args(m, required=True)
    m.set_defaults(func=cmd_match)

    t = sub.add_parser("trim", help="write a FIT with one configuration and its images")
    t.add_argument("file", type=Path, help="FIT file")
    choice = _board_args(t, required=False)
    choice.add_argument("--config", help="configuration name (instead of matching)")
    t.add_argument("-o", "--output", type=Path, required=True, help="output FIT")
    t.add_argument(
        "--add-hashes", action="store_true", help="add sha256 hash-1 to images without a hash"
    )
    t.set_defaults(func=cmd_trim)

    b = sub.add_parser("build", help="build a FIT from a kernel image and DTBs (make image.fit)")
    b.add_argument("--kernel", type=Path, required=True, help="Image, Image.gz or zImage")
    b.add_argument(
        "--dtbs",
        type=Path,
        action="append",
        required=True,
        help="folder searched recursively for *.dtb, or one .dtb file; repeatable",
    )
    b.add_argument("-o", "--output", type=Path, required=True, help="output FIT")
    b.add_argument("--arch", default="arm64", help="image arch (default arm64)")
    b.add_argument("--os", dest="os_name", default="linux", help="kernel os (default linux)")
    b.add_argument("--compression", default="none", choices=COMPRESSIONS)
    b.add_argument("--description", help="root description")
    b.set_defaults(func=cmd_build)

    for name in FIT_EXTENSIONS:
        importlib.import_module(name).register_fit(sub)


def _board_args(parser: argparse.ArgumentParser, *, required: bool) -> Any:
    """Add --compatible/--dtb (one of them) and --rule; return the exclusive group."""
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument(
        "--compatible",
        action="append",
        help="the board's compatible strings, most specific first, separated by spaces "
        '(dts style "a,b", "c,d" works too) or by repeating the option',
    )
    group.add_argument("--dtb", type=Path, help="take the board's compatible from this DTB")
    parser.add_argument("--rule", choices=RULES, default="barebox", help="matching rule")
    return group


def parse_compatible(values: Sequence[str]) -> list[str]:
    """Board compatible strings from CLI values: whitespace-separated, quotes and the commas
    between quoted dts strings dropped. A comma inside a string is kept: ``radxa,rock3a``."""
    out = []
    for value in values:
        for word in value.split():
            word = word.rstrip(",").strip("\"'")
            if word:
                out.append(word)
    return out


def board_compatible(args: argparse.Namespace) -> list[str]:
    """The board's compatible list from --compatible or --dtb."""
    if args.dtb is not None:
        return decode_list(read_dtb(args.dtb).compatible)
    compatible = parse_compatible(args.compatible)
    if not compatible:
        raise FitError("--compatible: no compatible string given")
    return compatible


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n / 1024 / 1024:.1f} MiB"


def _clip(text: str, width: int) -> str:
    """`text` cut to `width` characters, marked with "..." when cut (keeps the table readable
    when one DTB lists dozens of compatible strings)."""
    return text if len(text) <= width else text[: width - 3] + "..."


def cmd_ls(args: argparse.Namespace) -> int:
    """Print a table of the FIT's configurations."""
    with Fit.open(args.file) as fit:
        print(
            f"{args.file}: {fit.description or '(no description)'}; "
            f"{len(fit.configurations)} configurations, {len(fit.images)} images, "
            f"default {fit.default or '(none)'}"
        )
        rows = [("CONFIGURATION", "COMPATIBLE", "DESCRIPTION", "IMAGES", "SIZE")]
        for conf in fit.configurations.values():
            compat = ", ".join(conf.effective_compatible(fit)) or "-"
            if not conf.compatible and conf.fdt:
                compat = f"{compat} (from {conf.fdt[0]})"
            images = []
            size = 0
            for unit in conf.references():
                image = fit.images.get(unit)
                images.append(unit if image else f"{unit}(MISSING)")
                size += image.size if image else 0
            name = conf.name + (" *" if conf.name == fit.default else "")
            description = _clip(conf.description or "", 40)
            rows.append((name, _clip(compat, 64), description, " ".join(images), _size(size)))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        for row in rows:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[4])
    return 0


def _chosen(fit: Fit, args: argparse.Namespace) -> Match:
    result = match(fit, board_compatible(args), args.rule)
    if result.config is None:
        raise FitError(f"{args.file}: {result.reason}")
    return result


def cmd_match(args: argparse.Namespace) -> int:
    """Print the configuration the board boots under the rule, and why."""
    with Fit.open(args.file) as fit:
        result = _chosen(fit, args)
        print(result.config)
        print(f"  {result.reason}")
    return 0


def cmd_trim(args: argparse.Namespace) -> int:
    """Write the trimmed FIT next to the output and rename it into place."""
    if args.config is None and args.compatible is None and args.dtb is None:
        raise FitError("trim: give --config, --compatible or --dtb")
    with Fit.open(args.file) as fit:
        config = args.config if args.config is not None else _chosen(fit, args).config
        assert config is not None
        out: Path = args.output
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
        os.close(fd)
        try:
            size = trim(fit, config, Path(tmp), add_hashes=args.add_hashes)
            os.chmod(tmp, 0o644)
            os.replace(tmp, out)
        except BaseException:
            os.unlink(tmp)
            raise
        refs = " ".join(fit.configurations[config].references())
    print(f"{out}: {config} ({refs}), {size} bytes")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    """Build a FIT from a kernel and DTB folders."""
    dtbs: list[Path] = []
    for entry in args.dtbs:
        dtbs.extend(find_dtbs(entry) if entry.is_dir() else [entry])
    build_fit(
        args.kernel,
        dtbs,
        args.output,
        arch=args.arch,
        os_name=args.os_name,
        compression=args.compression,
        description=args.description,
    )
    print(f"{args.output}: {len(dtbs)} configurations, {args.output.stat().st_size} bytes")
    return 0
