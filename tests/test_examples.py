"""The rendered examples in docs/examples/ are what the daemon's own code renders today.

``docs/examples/render.py`` builds every example with the real notifiers, digest planner and
roll-up tracker; nothing ran it in CI, so a refactor once broke it silently and the committed
examples could drift from what users receive. Rendering into a temporary folder must give
exactly the committed files.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples"


def test_committed_examples_are_what_the_code_renders(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "render.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    rendered = sorted(p.name for p in tmp_path.iterdir())
    committed = sorted(p.name for p in EXAMPLES.iterdir() if p.name != "render.py")
    assert rendered == committed
    for name in rendered:
        assert (tmp_path / name).read_text(encoding="utf-8") == (EXAMPLES / name).read_text(
            encoding="utf-8"
        ), f"docs/examples/{name} is stale: run docs/examples/render.py"
