"""docs/lava.md: every job definition on the page passes LAVA's own job schema.

The schema is ``lava_common.schemas.validate`` from Debian's ``lava-common`` package (installed by
``.ci/run``); Debian installs it for the system's Python, so the check runs there, fed the parsed
job as JSON. A job that breaks the schema fails with LAVA's message and the path it names.
"""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import yaml

from tests.support.serve import REPO

DOC = REPO / "docs" / "lava.md"
SYSTEM_PYTHON = "/usr/bin/python3"  # where Debian's python3-lava-common lives
VALIDATE = """\
import json, sys
from lava_common.schemas import validate
from voluptuous import Invalid
try:
    validate(json.load(sys.stdin), strict=True)
except Invalid as err:
    print(f"{err.path}: {err.msg}")
    sys.exit(1)
"""


def jobs() -> list[str]:
    """The YAML blocks of docs/lava.md that are LAVA jobs (they start ``# LAVA job:``)."""
    blocks = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), flags=re.S)
    return [b for b in blocks if b.startswith("# LAVA job:")]


def validate(job: dict[str, object]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SYSTEM_PYTHON, "-c", VALIDATE],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_page_has_a_job() -> None:
    assert jobs(), f"no ```yaml block starting '# LAVA job:' in {DOC}"


@pytest.mark.parametrize("index", range(len(jobs())))
def test_job_passes_lavas_schema(index: int) -> None:
    job = yaml.safe_load(jobs()[index])
    r = validate(job)
    assert r.returncode == 0, r.stdout + r.stderr
    boot = next(a["boot"] for a in job["actions"] if "boot" in a)
    assert boot["method"] == "barebox" and "devboot" in boot["commands"], boot


def test_the_schema_check_can_fail() -> None:
    """The same job with a boot method LAVA does not know, and without its timeouts."""
    job = yaml.safe_load(jobs()[0])
    next(a["boot"] for a in job["actions"] if "boot" in a)["method"] = "devboot"
    r = validate(job)
    assert r.returncode == 1 and "unknown action type" in r.stdout, r.stdout + r.stderr
    job = yaml.safe_load(jobs()[0])
    del job["timeouts"]
    r = validate(job)
    assert r.returncode == 1 and "timeouts" in r.stdout, r.stdout + r.stderr
