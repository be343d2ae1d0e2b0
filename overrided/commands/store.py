"""`overrided store du`: what the store holds, build by build."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from overrided.errors import OverridedError
from overrided.store import Store


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``store du``."""
    parser = subparsers.add_parser("store", help="inspect the store of blobs")
    sub = parser.add_subparsers(dest="store_command", metavar="ACTION", required=True)
    du = sub.add_parser(
        "du",
        help="bytes each build holds in the store (shared blobs counted once, in 'shared')",
    )
    du.add_argument(
        "--store",
        type=Path,
        default=Path(".overrided"),
        metavar="DIR",
        help="the service's state folder (default: .overrided)",
    )
    du.add_argument("--json", action="store_true", help="print JSON instead of a table")
    du.set_defaults(func=_du)


def usage(store: Store) -> dict[str, object]:
    """Per build: its blobs with sizes, the bytes it holds and the bytes only it holds; then
    the blobs no build names (small inputs of board files, or waiting for collection)."""
    sizes: dict[str, int] = {}
    for path in store.blobs.iterdir():
        try:
            sizes[path.name] = path.stat().st_size
        except OSError:
            continue
    manifests = store.build_manifests()
    owners: dict[str, set[str]] = {}
    for build, blobs in manifests.items():
        for digest in blobs.values():
            owners.setdefault(digest, set()).add(build)
    builds = []
    for build, blobs in sorted(manifests.items()):
        present = {role: d for role, d in blobs.items() if d in sizes}
        distinct = set(present.values())
        builds.append(
            {
                "build": build,
                "blobs": [
                    {"role": role, "digest": d, "size": sizes[d]}
                    for role, d in sorted(present.items())
                ],
                "bytes": sum(sizes[d] for d in distinct),
                "own_bytes": sum(sizes[d] for d in distinct if owners[d] == {build}),
                "missing": sorted(role for role, d in blobs.items() if d not in sizes),
            }
        )
    other = sorted(d for d in sizes if d not in owners)
    return {
        "store": str(store.root),
        "total_bytes": sum(sizes.values()),
        "blobs": len(sizes),
        "builds": builds,
        "other": {"blobs": len(other), "bytes": sum(sizes[d] for d in other)},
    }


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def _du(args: argparse.Namespace) -> int:
    root: Path = args.store
    if not (root / "blobs").is_dir():
        raise OverridedError(f"{root}: not a store (no blobs/ folder); pass --store DIR")
    report = usage(Store(root))
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    builds = report["builds"]
    assert isinstance(builds, list)
    print(f"{'build':<24} {'holds':>11} {'only it':>11}  blobs")
    for b in builds:
        roles = ", ".join(f"{x['role']} {_size(x['size'])}" for x in b["blobs"])
        missing = f" (collected: {', '.join(b['missing'])})" if b["missing"] else ""
        sizes = f"{_size(b['bytes']):>11} {_size(b['own_bytes']):>11}"
        print(f"{b['build']:<24} {sizes}  {roles}{missing}")
    other = report["other"]
    assert isinstance(other, dict)
    print(f"{'(no build)':<24} {_size(other['bytes']):>11} {'':>11}  {other['blobs']} blobs")
    total = report["total_bytes"]
    assert isinstance(total, int)
    print(f"{'total':<24} {_size(total):>11}  {report['blobs']} blobs in {report['store']}")
    return 0
