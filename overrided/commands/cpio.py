"""`overrided cpio …`: list, concatenate and build the CPIO archives an initrd is made of."""

from __future__ import annotations

import argparse
import os
import stat
import sys
from pathlib import Path

from overrided import cpio
from overrided.kernel import release_of_image


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``cpio ls|concat|modules|init``."""
    parser = subparsers.add_parser("cpio", help="inspect, concatenate and build initrd archives")
    sub = parser.add_subparsers(dest="cpio_command", metavar="ACTION", required=True)

    ls = sub.add_parser("ls", help="list each part of an initrd: offset, compression, entries")
    ls.add_argument("files", nargs="+", type=Path, metavar="FILE")
    ls.add_argument("-s", "--summary", action="store_true", help="only one line per part")
    ls.set_defaults(func=_ls)

    cat = sub.add_parser("concat", help="concatenate CPIO parts into one initrd")
    cat.add_argument("parts", nargs="+", type=Path, metavar="PART")
    cat.add_argument("-o", "--output", type=Path, required=True, metavar="OUT")
    release = cat.add_mutually_exclusive_group()
    release.add_argument(
        "--kernel", type=Path, metavar="IMAGE", help="warn if the modules do not match this kernel"
    )
    release.add_argument("--release", metavar="RELEASE", help="the kernel release to check for")
    cat.set_defaults(func=_concat)

    mods = sub.add_parser(
        "modules", help="make a modules CPIO from lib/modules/<release> (as modules-cpio-pkg)"
    )
    mods.add_argument("tree", type=Path, metavar="DIR", help="modules folder or tarball")
    mods.add_argument("-o", "--output", type=Path, required=True, metavar="OUT")
    mods.add_argument("--compress", choices=cpio.COMPRESSIONS, help="compress the archive")
    mods.set_defaults(func=_modules)

    init = sub.add_parser("init", help="make an init CPIO from a folder")
    init.add_argument("folder", type=Path, metavar="DIR")
    init.add_argument("-o", "--output", type=Path, required=True, metavar="OUT")
    init.add_argument("--compress", choices=cpio.COMPRESSIONS, help="compress the archive")
    init.set_defaults(func=_init)


def _source_date_epoch() -> int | None:
    value = os.environ.get("SOURCE_DATE_EPOCH")
    if not value:
        return None
    if not value.isdigit():
        raise cpio.CpioError(f"SOURCE_DATE_EPOCH: not a number of seconds: {value!r}")
    return int(value)


def _entry_line(e: cpio.Entry) -> str:
    kind = stat.filemode(e.mode)
    if stat.S_ISCHR(e.mode) or stat.S_ISBLK(e.mode):
        size = f"{e.rdevmajor},{e.rdevminor}"
    else:
        size = str(e.size)
    name = f"{e.name} -> {e.target}" if e.target is not None else e.name
    return f"    {kind} {e.uid:>5} {e.gid:>5} {size:>10}  {name}"


def _ls(args: argparse.Namespace) -> int:
    for path in args.files:
        print(f"{path}:")
        for part in cpio.inspect(path):
            what = part.compression or "raw"
            print(
                f"  part at offset {part.offset}: {what}, {part.size} bytes, "
                f"{len(part.entries)} entries"
            )
            if not args.summary:
                for e in part.entries:
                    print(_entry_line(e))
    return 0


def _concat(args: argparse.Namespace) -> int:
    kernel_release = args.release
    if args.kernel is not None:
        kernel_release = release_of_image(args.kernel)
        if kernel_release is None:
            print(f"warning: {args.kernel}: no 'Linux version' banner found", file=sys.stderr)
    placed = cpio.concat(args.parts, args.output)
    for info in placed:
        print(
            f"{info.offset:>12}  {info.compression or 'raw':<6} {info.size:>12} bytes  {info.path}"
        )
    for warning in cpio.initrd_warnings(args.parts, kernel_release):
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def _modules(args: argparse.Namespace) -> int:
    release = cpio.modules_cpio(
        args.tree, args.output, compress=args.compress, source_date_epoch=_source_date_epoch()
    )
    print(release)
    return 0


def _init(args: argparse.Namespace) -> int:
    cpio.init_cpio_from_dir(
        args.folder, args.output, compress=args.compress, source_date_epoch=_source_date_epoch()
    )
    return 0
