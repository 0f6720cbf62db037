"""The README stays true: its example imports what the package exports, and its Layout
section has one line for every module of the package."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import amqp_agents

ROOT = Path(__file__).parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_the_example_imports_from_the_top_level_package() -> None:
    example = re.search(r"```python\n(.*?)```", README, re.DOTALL)
    assert example is not None
    imports = [node for node in ast.walk(ast.parse(example[1])) if isinstance(node, ast.ImportFrom)]
    ours = [node for node in imports if (node.module or "").startswith("amqp_agents")]
    assert ours and all(node.module == "amqp_agents" for node in ours)
    for node in ours:
        for alias in node.names:
            assert alias.name in amqp_agents.__all__, alias.name


def test_the_layout_section_describes_every_module_once() -> None:
    section = README[README.index("## Layout") :]
    described = re.findall(r"^\| `(\w+)` \|", section, re.MULTILINE)
    package = ROOT / "amqp_agents"
    modules = sorted(
        p.stem if p.is_file() else p.name
        for p in package.iterdir()
        if (p.suffix == ".py" and p.stem not in ("__init__", "__main__"))
        or (p.is_dir() and (p / "__init__.py").exists())
    )
    assert sorted(described) == modules
