"""Check that constraints/oldest.txt pins every tested dependency at its pyproject.toml lower bound."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = ("test", "plot", "root")  # the extras `make test-oldest` installs
SKIP = {"torch"}  # installed from TORCH_SPEC, not from the constraints


def _name(text: str) -> str:
    """The normalized project name (PEP 503): lower case, runs of ``-_.`` as one ``-``."""
    return re.sub(r"[-_.]+", "-", text).lower()


def _release(version: str) -> tuple[int, ...]:
    """``"13"`` -> ``(13, 0, 0)``: release numbers padded so that 13 and 13.0.0 compare equal."""
    parts = [int(p) for p in version.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


def lower_bounds(pyproject: Path) -> dict[str, str]:
    """``{name: lower bound}`` of the core dependencies and of the tested extras.

    Arguments:
        pyproject: the ``pyproject.toml`` to read.

    Returns:
        One entry per dependency with a ``>=`` bound (torch left out).

    Raises:
        SystemExit: a tested dependency has no ``>=`` lower bound.
    """
    project = tomllib.loads(pyproject.read_text())["project"]
    specs = list(project["dependencies"])
    for extra in EXTRAS:
        specs += project["optional-dependencies"][extra]
    bounds = {}
    for spec in specs:
        m = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(.*)$", spec)
        name, rest = _name(m.group(1)), m.group(2)
        if name in SKIP or name == "showerformer":
            continue
        low = re.search(r">=\s*([0-9][0-9.]*)", rest)
        if low is None:
            sys.exit(f"error: {pyproject}: dependency {spec!r} has no lower bound "
                     "(expected name>=VERSION)")
        bounds[name] = low.group(1)
    return bounds


def pins(constraints: Path) -> dict[str, str]:
    """``{name: version}`` of the ``name==version`` lines of a constraints file."""
    out = {}
    for line in constraints.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            out[_name(name)] = version.strip()
    return out


def main(argv: list[str]) -> int:
    """Compare both files; print one line per mismatch on stderr.

    Arguments:
        argv: optionally the constraints file (default ``constraints/oldest.txt``).

    Returns:
        0 when every bound is pinned at its value and nothing else is pinned, else 2.
    """
    pyproject = ROOT / "pyproject.toml"
    constraints = Path(argv[0]) if argv else ROOT / "constraints" / "oldest.txt"
    bounds, pinned = lower_bounds(pyproject), pins(constraints)
    problems = []
    for name, low in sorted(bounds.items()):
        if name not in pinned:
            problems.append(f"{name}>={low} is not pinned (expected {name}=={low})")
        elif _release(pinned[name]) != _release(low):
            problems.append(f"{name}=={pinned[name]} differs from the lower bound {name}>={low}")
    problems += [f"{name} is pinned but is no tested dependency" for name in pinned
                 if name not in bounds]
    for p in problems:
        print(f"error: {constraints}: {p}", file=sys.stderr)
    return 2 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
