"""Write ``<name>.json`` beside every ``dashboards/<name>.dashboard.py``; ``--check`` only reports drift.

Run from the repository root::

    python -m dashboards.generate          # regenerate the committed JSON
    python -m dashboards.generate --check  # exit 1, naming the files, if any JSON is out of date

(``python dashboards/generate.py`` works as well.)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from grafanalib._gen import DashboardEncoder, loader

__all__ = ["DASHBOARDS_DIR", "json_path", "main", "render", "sources", "update"]

DASHBOARDS_DIR = Path(__file__).resolve().parent
SUFFIX = ".dashboard.py"


def sources() -> list[Path]:
    """Every dashboard source, in name order."""
    return sorted(DASHBOARDS_DIR.glob(f"*{SUFFIX}"))


def json_path(source: Path) -> Path:
    """Where the JSON generated from ``source`` lives: ``budget-overview.dashboard.py`` -> ``budget-overview.json``."""
    return source.with_name(source.name.removesuffix(SUFFIX) + ".json")


def render(source: Path) -> str:
    """The dashboard JSON for ``source``: sorted keys, two-space indent, trailing newline."""
    dashboard = loader(str(source))
    return json.dumps(dashboard.to_json_data(), cls=DashboardEncoder, sort_keys=True, indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboards.generate", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report out-of-date JSON instead of writing it")
    args = parser.parse_args(argv)
    return update({json_path(source): render(source) for source in sources()}, check=args.check)


def update(outputs: dict[Path, str], *, check: bool) -> int:
    """Write each generated text whose file differs from it (or, with ``check``, only name them); the exit status."""
    stale = [target for target, text in outputs.items() if not target.exists() or target.read_text("utf-8") != text]
    for target in stale:
        if not check:
            target.write_text(outputs[target], encoding="utf-8")
        print(f"{'out of date' if check else 'wrote'}: {os.path.relpath(target)}")
    return 1 if check and stale else 0


if __name__ == "__main__":
    if not __package__:  # run as `python dashboards/generate.py`: the sources import `dashboards.house`
        sys.path.insert(0, str(DASHBOARDS_DIR.parent))
    sys.exit(main())
