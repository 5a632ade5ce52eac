"""The house rules of the package that a linter does not check."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "replygate"
MAX_LINES = 500
# Names of our dependencies' best-known classes: ours would be confused with theirs.
TAKEN_CLASS_NAMES = frozenset({"Engine", "Session", "SMTP", "Message", "Request", "Response"})
# Our own classes may keep these names where the domain has no better word.
DOMAIN_NAMES = frozenset({"Message"})


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "migrations" not in p.parts)


def test_no_module_or_package_is_named_after_the_standard_library() -> None:
    clashes = sorted(
        str(p.relative_to(PACKAGE.parent))
        for p in [*modules(), *(d for d in PACKAGE.rglob("*") if d.is_dir())]
        if (p.stem if p.is_file() else p.name) in sys.stdlib_module_names
    )
    assert not clashes, f"named after a standard-library module: {clashes}"


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_is_over_the_line_limit(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.name} has {lines} lines; split it along its seams"


def test_no_class_takes_a_dependency_s_best_known_name() -> None:
    found = sorted(
        f"{p.relative_to(PACKAGE)}:{node.name}"
        for p in modules()
        for node in ast.walk(ast.parse(p.read_text()))
        if isinstance(node, ast.ClassDef) and node.name in TAKEN_CLASS_NAMES - DOMAIN_NAMES
    )
    assert not found, f"classes named after a dependency's: {found}"


def test_one_definition_of_each_role_table() -> None:
    """User roles live in ``store.models.UserRole``, process roles in ``runtime.ProcessRole``."""
    found = sorted(
        str(p.relative_to(PACKAGE))
        for p in modules()
        for node in ast.walk(ast.parse(p.read_text()))
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "ROLES" for t in node.targets)
    )
    assert not found, f"a ROLES table besides the enums: {found}"
