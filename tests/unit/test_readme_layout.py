"""The README's Layout section matches the tree: every package it names exists, every
package of the tree is named, and every module it names exists where it says."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _layout_rows() -> list[tuple[str, str]]:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0].startswith("`notifyd/"):
            rows.append((cells[0], cells[1]))
    return rows


def test_every_package_is_in_the_layout_and_every_named_place_exists() -> None:
    rows = _layout_rows()
    assert rows, "README has no Layout table"
    named_dirs: set[Path] = set()
    for where, what in rows:
        for path in re.findall(r"`(notifyd/[\w/.]*)`", where):
            assert (ROOT / path).exists(), f"README Layout names {path}, which does not exist"
            base = ROOT / path
            if base.is_dir():
                named_dirs.add(base)
                # Modules and subpackages named in the row are relative to the package.
                for name in re.findall(r"`([\w/]+(?:\.py|/))`", what):
                    assert (base / name).exists() or any(
                        (d / name).exists() for d in base.rglob("*") if d.is_dir()
                    ), f"README Layout names {name} under {path}, which does not exist"
    packages = {p.parent for p in (ROOT / "notifyd").glob("*/__init__.py")}
    missing = sorted(str(p.relative_to(ROOT)) for p in packages - named_dirs)
    assert not missing, f"packages missing from the README Layout: {missing}"
