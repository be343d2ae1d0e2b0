"""`overrided keys new|export`: make signing keys and export their public half for bootloaders."""

from __future__ import annotations

import argparse
from pathlib import Path

from overrided.keys import (
    KEY_ALGOS,
    export_pem,
    export_uboot_dtb,
    new_key,
    public_key_of,
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``keys new`` and ``keys export``."""
    parser = subparsers.add_parser("keys", help="make FIT signing keys and export public keys")
    sub = parser.add_subparsers(dest="keys_command", metavar="ACTION", required=True)

    def keys_dir(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--keys",
            type=Path,
            default=Path("keys"),
            metavar="DIR",
            help="keys folder, outside every served root (default: keys)",
        )

    new = sub.add_parser("new", help="create <DIR>/<NAME>.key (mode 0600) and <NAME>.crt")
    new.add_argument("name", metavar="NAME")
    new.add_argument("--algo", choices=KEY_ALGOS, default="rsa2048")
    keys_dir(new)
    new.set_defaults(func=_new)

    export = sub.add_parser("export", help="write the public key for U-Boot or barebox")
    export.add_argument("name", metavar="NAME")
    keys_dir(export)
    out = export.add_mutually_exclusive_group(required=True)
    out.add_argument(
        "--uboot-dtb", type=Path, metavar="OUT.dtb", help="a DTB with /signature/key-<NAME>"
    )
    out.add_argument(
        "--pem", type=Path, metavar="OUT.pem", help="PEM for barebox CONFIG_CRYPTO_PUBLIC_KEYS"
    )
    export.add_argument(
        "--required",
        choices=("conf", "image"),
        help="mark the U-Boot key required (U-Boot then refuses unsigned configurations)",
    )
    export.add_argument("--algo", metavar="ALGO", help="algo property (default sha256,<key type>)")
    export.add_argument(
        "--base-dtb", type=Path, metavar="DTB", help="add the key to a copy of this DTB"
    )
    export.set_defaults(func=_export)


def _new(args: argparse.Namespace) -> int:
    path = new_key(args.keys, args.name, args.algo)
    print(f"{path}: new {args.algo} key (mode 0600); keep {args.keys} out of served folders")
    return 0


def _export(args: argparse.Namespace) -> int:
    key = public_key_of(args.keys, args.name)
    if args.pem is not None:
        export_pem(key, args.pem)
        print(f"{args.pem}: public key {args.name!r}")
        print(f'barebox: CONFIG_CRYPTO_PUBLIC_KEYS="keyring=fit,fit-hint={args.name}:{args.pem}"')
        return 0
    export_uboot_dtb(
        key,
        args.name,
        args.uboot_dtb,
        algo=args.algo,
        required=args.required,
        base_dtb=args.base_dtb,
    )
    print(f"{args.uboot_dtb}: /signature/key-{args.name}")
    return 0
