"""`overrided fit sign` and `overrided fit verify`: configuration signatures from the shell."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from overrided.fit.model import FitError
from overrided.fit.sign import PADDINGS, bootloader_warnings, sign_all, sign_configuration
from overrided.fit.verify import verify
from overrided.keys import key_algo, load_private_key_file, load_public_keys, load_signing_key


def register_fit(fit_subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``fit sign`` and ``fit verify`` to the ``fit`` group."""
    sign = fit_subparsers.add_parser(
        "sign", help="sign configurations (covering every image they reference)"
    )
    sign.add_argument("file", type=Path, metavar="FILE")
    key = sign.add_mutually_exclusive_group()
    key.add_argument("--key", type=Path, metavar="KEY.pem", help="PEM private key (mode 0600)")
    key.add_argument(
        "--keys",
        type=Path,
        default=Path("keys"),
        metavar="DIR",
        help="keys folder holding <key-name>.key (default: keys)",
    )
    sign.add_argument(
        "--key-name", required=True, metavar="NAME", help="key-name-hint written to the FIT"
    )
    sign.add_argument("--config", metavar="NAME", help="sign only this configuration")
    sign.add_argument(
        "--algo", metavar="ALGO", help="e.g. sha256,rsa2048 (default: sha256 and the key's type)"
    )
    sign.add_argument("--padding", choices=PADDINGS, default="pkcs-1.5")
    sign.add_argument("-o", "--output", type=Path, required=True, metavar="OUT")
    sign.set_defaults(func=_sign)

    check = fit_subparsers.add_parser(
        "verify",
        help="check every referenced image's hashes, and the configuration signatures present",
    )
    check.add_argument("file", type=Path, metavar="FILE")
    check.add_argument(
        "--key",
        type=Path,
        metavar="KEY",
        help="PEM public key, certificate, private key, or a U-Boot key DTB (/signature);"
        " without it, signatures are not checked",
    )
    check.add_argument("--config", metavar="NAME", help="check only this configuration")
    check.add_argument(
        "--require-signature",
        action="store_true",
        help="fail a configuration without a signature, or whose signature cannot be checked"
        " (barebox verify=signature)",
    )
    check.set_defaults(func=_verify)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise FitError(f"{path}: cannot read: {err.strerror}") from None


def _write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` in one rename so nobody reads a half-written FIT."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _sign(args: argparse.Namespace) -> int:
    if args.key is not None:
        key = load_private_key_file(args.key)
    else:
        key = load_signing_key(args.keys, args.key_name)
    algo = args.algo or f"sha256,{key_algo(key)}"
    blob = _read(args.file)
    try:
        if args.config is not None:
            signed = sign_configuration(
                blob, args.config, key, key_name=args.key_name, algo=algo, padding=args.padding
            )
        else:
            signed = sign_all(blob, key, key_name=args.key_name, algo=algo, padding=args.padding)
    except FitError as err:
        raise FitError(f"{args.file}: {err}") from None
    _write_atomically(args.output, signed)
    for warning in bootloader_warnings(algo, args.padding):
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{args.output}: signed {args.config or 'every configuration'} with {algo}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    keys = load_public_keys(args.key) if args.key is not None else None
    try:
        report = verify(
            _read(args.file), keys, config=args.config, require_signature=args.require_signature
        )
    except FitError as err:
        raise FitError(f"{args.file}: {err}") from None
    for line in report.lines():
        print(line)
    skipped = len(report.skipped())
    note = f" ({skipped} not checked: see SKIP)" if skipped else ""
    print(f"{args.file}: {'OK' if report.ok else 'FAILED'}{note}")
    return 0 if report.ok else 1
