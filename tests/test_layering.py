"""The package's layers: every import inside jaxcnn/ follows docs/design.md, and importing
jaxcnn changes no global state."""

import ast
import json
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
PKG = ROOT / "jaxcnn"


def _allowed() -> dict[str, set[str]]:
    """The table of docs/design.md: package -> the packages it may import."""
    text = (ROOT / "docs" / "design.md").read_text()
    table = {}
    for line in text.splitlines():
        m = re.match(r"\|\s*`jaxcnn(?:\.(\w+))?`[^|]*\|(.*)\|\s*$", line)
        if m:
            table[m.group(1) or ""] = set(re.findall(r"`(\w+)`", m.group(2)))
    assert {"utils", "layers", "models", "train", "inspect", ""} <= set(table), table
    return table


def _imports(rel: pathlib.PurePath, source: str):
    """(line, imported module) for every import in ``source`` (the file ``rel``), inside
    functions too."""
    parts = rel.with_suffix("").parts
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(parts[:-1])[: len(parts) - node.level]
                names = [".".join(base + ([node.module] if node.module else []))]
                if not node.module:
                    names = [".".join(base + [a.name]) for a in node.names]
            elif node.module == "jaxcnn":
                names = [f"jaxcnn.{a.name}" for a in node.names]
            else:
                names = [node.module]
        else:
            continue
        for name in names:
            yield node.lineno, name


def _package(parts) -> str:
    """``jaxcnn/train/trainer.py`` -> "train"; ``jaxcnn/checkpoint.py`` -> "checkpoint";
    ``jaxcnn/__init__.py`` -> ""."""
    return "" if parts[1] == "__init__" else parts[1]


def _violations(files) -> list[str]:
    """What breaks docs/design.md's rules in ``files``: ``(path relative to the repo, source)``."""
    allowed = _allowed()
    problems = []
    for rel, source in files:
        src = _package(rel.with_suffix("").parts)
        if src not in allowed:
            problems.append(f"{rel}: package jaxcnn.{src} is not in docs/design.md's table")
            continue
        for line, name in _imports(rel, source):
            top = name.split(".")[0]
            if top in ("experiments", "tests"):
                problems.append(f"{rel}:{line} imports {name}")
            if top != "jaxcnn" or name == "jaxcnn":
                continue
            target = name.split(".")[1]
            if target == src:
                continue
            if target not in allowed[src]:
                problems.append(f"{rel}:{line}: jaxcnn.{src or '(top)'} may not import {name}")
            private = [p for p in name.split(".")[2:] if p.startswith("_") and p != "__init__"]
            if private:
                problems.append(f"{rel}:{line} imports the private module {name}")
    return problems


def test_imports_follow_the_design():
    files = [(p.relative_to(ROOT), p.read_text()) for p in sorted(PKG.rglob("*.py"))]
    assert len(files) > 50
    problems = _violations(files)
    assert not problems, "\n".join(problems)


def test_layering_check_sees_violations():
    probe = "from jaxcnn.inspect._common import resolve\nimport jaxcnn.train\n"
    msg = "\n".join(
        _violations(
            [
                (pathlib.PurePath("jaxcnn/layers/probe.py"), probe),
                (pathlib.PurePath("jaxcnn/newpkg/x.py"), ""),
                (
                    pathlib.PurePath("jaxcnn/models/y.py"),
                    "from . import resnet\nimport experiments",
                ),
            ]
        )
    )
    assert "private module jaxcnn.inspect._common" in msg
    assert "jaxcnn.layers may not import jaxcnn.inspect._common" in msg
    assert "jaxcnn.layers may not import jaxcnn.train" in msg
    assert "jaxcnn.newpkg is not in docs/design.md's table" in msg
    assert "imports experiments" in msg and "resnet" not in msg


def test_import_changes_no_global_state():
    """Importing the library leaves matplotlib alone (not even imported) and sets no
    environment variable; the conv implementation is a field, not a global."""
    code = """
import json, os, sys
import matplotlib
matplotlib.use("svg")
before = dict(os.environ)
import jaxcnn, jaxcnn.models, jaxcnn.layers, jaxcnn.train, jaxcnn.transfer, jaxcnn.inspect
import jaxcnn.interop, jaxcnn.utils
after = dict(os.environ)
print(json.dumps({
    "backend": matplotlib.get_backend(),
    "pyplot": "matplotlib.pyplot" in sys.modules,
    "env": sorted(set(after.items()) ^ set(before.items())),
}))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"backend": "svg", "pyplot": False, "env": []}
