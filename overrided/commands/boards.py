"""`overrided boards ls|check`: list and validate board files without starting the service."""

from __future__ import annotations

import argparse
import tempfile
from ipaddress import IPv4Network
from pathlib import Path

from overrided.clients.barebox import script_name
from overrided.config import Board, load_boards
from overrided.dhcp import check_subnet
from overrided.discovery import Inputs, build_folders, find_inputs
from overrided.errors import OverridedError
from overrided.fit import Fit, build_fit, match
from overrided.fit.cache import open_fit


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``boards ls`` and ``boards check``."""
    p = sub.add_parser("boards", help="list or check board files")
    bsub = p.add_subparsers(dest="boards_command", metavar="ACTION", required=True)
    ls = bsub.add_parser(
        "ls", help="one line per valid board: names, what it matches and what it resolves to"
    )
    ls.add_argument("--boards", type=Path, default=Path("boards"))
    ls.add_argument(
        "--builds",
        type=Path,
        default=Path("kernel-builds"),
        help="the build folders the board picks from (default: kernel-builds)",
    )
    ls.set_defaults(func=list_boards)
    check = bsub.add_parser("check", help="validate every board file; exit 1 on any error")
    check.add_argument("--boards", type=Path, default=Path("boards"))
    check.add_argument(
        "--subnet",
        type=_subnet,
        help="the subnet DHCP serves (e.g. 192.0.2.0/24): every board's ip must lie in it",
    )
    check.set_defaults(func=check_boards)


def _subnet(text: str) -> IPv4Network:
    try:
        return IPv4Network(text, strict=False)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an IPv4 subnet like 192.0.2.0/24"
        ) from None


def list_boards(args: argparse.Namespace) -> int:
    """Print each valid board with what it resolves to, and each invalid file's error."""
    boards, errors = load_boards(args.boards)
    resolver = _Resolver(args.builds)
    try:
        for b in boards:
            print(
                f"{b.name}\t{script_name(b.user, b.hostname)}\t{b.rule}"
                f"\t{', '.join(b.compatible)}\t{resolver.resolve(b)}"
            )
    finally:
        resolver.close()
    for err in errors.values():
        print(f"error: {err}")
    return 0


class _Resolver:
    """What each board would boot from the build folders as they are now, the way the service
    picks: the build the board names, else the most recently written one; then the FIT
    configuration by the board's rule. Reads only: a build of ``Image`` + DTBs gets its FIT
    made in a temporary folder, the store is not touched."""

    def __init__(self, builds_dir: Path) -> None:
        self.builds_dir = builds_dir
        self.folders = {p.name: p for p in build_folders(builds_dir)}
        self._inputs: dict[str, Inputs] = {}
        self._fits: dict[str, Fit | str] = {}
        self._tmp = tempfile.TemporaryDirectory(prefix="overrided-boards-")

    def close(self) -> None:
        """Release the parsed FITs and the temporary folder."""
        for fit in self._fits.values():
            if not isinstance(fit, str):
                fit.close()
        self._tmp.cleanup()

    def inputs(self, name: str) -> Inputs:
        if name not in self._inputs:
            self._inputs[name] = find_inputs(self.folders[name])
        return self._inputs[name]

    def latest(self) -> str | None:
        usable = [n for n in self.folders if self.inputs(n).fit or self.inputs(n).kernel]

        def written(name: str) -> tuple[float, str]:
            return max(p.stat().st_mtime for p in self.inputs(name).files()), name

        return max(usable, key=written, default=None)

    def fit(self, name: str, arch: str) -> Fit | str:
        """The build's FIT, or why there is none."""
        if name not in self._fits:
            inputs = self.inputs(name)
            try:
                if inputs.fit is not None:
                    self._fits[name] = open_fit(inputs.fit)
                elif inputs.kernel is not None:
                    out = Path(self._tmp.name) / f"{name}.fit"
                    build_fit(inputs.kernel, inputs.dtbs, out, arch=arch, kernel_only=True)
                    self._fits[name] = open_fit(out)
                else:
                    self._fits[name] = "no image.fit, and no Image with DTBs"
            except (OverridedError, OSError) as err:
                self._fits[name] = str(err)
        return self._fits[name]

    def resolve(self, board: Board) -> str:
        """``build <name>, <configuration> (<description>): <why>`` or ``not served: <why>``."""
        if board.build:
            if board.build not in self.folders:
                return f"not served: build {board.build!r} does not exist in {self.builds_dir}"
            name = board.build
        else:
            found = self.latest()
            if found is None:
                return f"not served: no usable build in {self.builds_dir} yet"
            name = found
        fit = self.fit(name, board.arch)
        picked = f"build {name}" + ("" if board.build else " (latest)")
        if isinstance(fit, str):
            return f"not served: {picked}: {fit}"
        m = match(fit, board.compatible, board.rule)
        if m.config is None:
            from overrided.render import kernel_alone  # the service's rule; a heavy import

            alone = kernel_alone(board, fit)
            if alone is not None:
                return f"{picked}, {alone}'s kernel, with the board's own device tree"
            return f"not served: {picked}: {m.reason}"
        conf = fit.configurations[m.config]
        desc = f" ({conf.description})" if conf.description else ""
        notes = ""
        if board.initrd and not self.inputs(name).modules:
            notes = f"; warning: initrd = {board.initrd!r}, but the build has no modules CPIO"
        return f"{picked}, {m.config}{desc}: {m.reason}{notes}"


def check_boards(args: argparse.Namespace) -> int:
    """Validate; print one line per problem; exit status 1 if there is any."""
    boards, errors = load_boards(args.boards)
    if args.subnet is not None:
        outside = check_subnet(boards, args.subnet)
        for name, why in outside.items():
            errors[f"{args.boards.name}/{name}.toml"] = f"{args.boards.name}/{name}.toml: {why}"
        boards = [b for b in boards if b.name not in outside]
    for err in errors.values():
        print(err)
    print(f"{len(boards)} valid, {len(errors)} invalid")
    return 1 if errors else 0
