"""docs/architecture.md names every module of the three packages by its path, and no module that is gone."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("client/milex", "agent/milex_agent", "common/milex_common")


def test_every_module_is_on_the_map_and_the_map_names_no_module_that_is_gone():
    modules = {str(path.relative_to(REPO)) for package in PACKAGES for path in (REPO / package).rglob("*.py")}
    text = (REPO / "docs" / "architecture.md").read_text()
    named = set(re.findall(r"^- `((?:client|agent|common)/[\w/]+\.py)`:", text, re.MULTILINE))
    assert sorted(modules - named) == [], "modules docs/architecture.md's 'Every module' lacks"
    assert sorted(named - modules) == [], "modules docs/architecture.md names that do not exist"


def test_the_clients_top_level_holds_at_most_ten_modules_beside_its_subpackages():
    """The user's concepts (config, capture, records, api, watch...); the rest lives in a subpackage
    named for what it does (machine/, cli/, config/, provenance/)."""
    top = sorted(path.name for path in (REPO / "client" / "milex").glob("*.py") if path.name != "__init__.py")
    assert len(top) <= 10, top
