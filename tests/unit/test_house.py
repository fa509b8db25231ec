"""The house rules that imports cannot show: every Redis name is spelled in live/names.py only.
(The import rules are import-linter contracts in pyproject.toml, run by `make lint`.)"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NAMES_MODULE = ROOT / "services" / "live" / "names.py"
# A key or channel name: Ridemesh's prefix followed by more of a name, or by an f-string's
# placeholder (a partition's hash tag).
REDIS_NAME = re.compile(r"(?<![\w-])rm:(?:[\w*{]|$)")


def _strings(tree: ast.AST) -> list[tuple[int, str]]:
    """Every string literal, f-string parts included, with its line."""
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    ]


def _redis_names_outside_the_names_module() -> list[str]:
    found = []
    for path in sorted([*(ROOT / "services").rglob("*.py"), *(ROOT / "bench").rglob("*.py")]):
        if path == NAMES_MODULE:
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for line, value in _strings(tree):
            if REDIS_NAME.search(value):
                found.append(f"{path.relative_to(ROOT)}:{line}: {value[:60]!r}")
    return found


def test_every_redis_name_is_spelled_in_the_names_module_only() -> None:
    assert _redis_names_outside_the_names_module() == []


def test_the_names_module_holds_the_names() -> None:
    # The check above would pass vacuously if it could not see a name where one is spelled.
    spelled = [value for _, value in _strings(ast.parse(NAMES_MODULE.read_text()))]
    assert sum(bool(REDIS_NAME.search(value)) for value in spelled) >= 15


def test_a_name_in_a_lua_script_is_seen() -> None:
    script = "redis.call('HGET', 'rm:driver:' .. ARGV[1], 't')"
    tree = ast.parse(
        f"SCRIPT = {script!r}\nKEY = f'rm:gf:{{driver}}'\nTAGGED = f'rm:{{tag}}:geo'\n"
    )
    assert [bool(REDIS_NAME.search(value)) for _, value in _strings(tree)] == [
        True,
        True,
        True,
        False,
    ]
