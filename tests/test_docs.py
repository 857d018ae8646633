"""Every fenced code block of README.md and docs/*.md runs as written; one test per block, with
the id ``FILE:LINE`` of the block's opening fence.

The rules a doc page follows (and this test checks):

- A ```python block runs on its own: a fresh namespace and a fresh empty working directory per
  block, so a reader can copy any one block. What a block needs (a model, its variables, a batch
  of images) is defined in the block itself, in visible setup lines marked ``# setup: ...``, never
  in a hidden fixture. Blocks in doctest form (lines starting ``>>> ``) run line by line; a line
  ``SomeError: message`` after a statement says that the statement raises ``SomeError`` with a
  message starting with ``message`` (``(...)`` marks where the doc shortens it); other output
  lines are not compared.
- A marker comment on the line before a block changes how it runs:

  - ``<!-- docs-test: slow (reason) -->``: the block runs only under ``-m slow`` (it trains or
    compiles for long); the default suite still runs the block's import statements, so a renamed
    function fails fast.
  - ``<!-- docs-test: skip (reason) -->``: the block never runs (it needs the network, torch,
    published weights); its ``jaxcnn`` imports are still checked.

- A ```bash block is not run. Every ``python -m MODULE`` and ``python path/to/script.py`` in it
  names a module or file of the repository, and each ``--flag`` is one that script defines (read
  from its source: ``argparse`` ``add_argument`` and absl ``DEFINE_*`` calls). For the engine's
  scripts (``experiments.train``, ``experiments.segment``) the whole command line goes through
  the script's own parser and every ``--config.KEY=VALUE`` through the task's config schema
  (known key, valid value); for the absl scripts, ``KEY`` must be a key of the config file's
  ``get_config()``. A config file a command names must exist (``X.py``, ``<config>`` are
  placeholders, as is ``…``). A command quoted inline in the prose (``python -m ...`` in
  backticks) is checked the same way. Other fences (program output, the layout tree) are not
  run.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
import pathlib
import re
import shlex

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^```(\w*)\s*$")
_MARKER = re.compile(r"^<!--\s*docs-test:\s*(slow|skip)\s*\((.+)\)\s*-->\s*$")


@dataclasses.dataclass(frozen=True)
class Block:
    page: pathlib.Path
    line: int  # 1-based line of the opening fence
    lang: str
    source: str
    marker: str | None  # "slow", "skip" or None
    reason: str

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def extract_blocks(page: pathlib.Path) -> list[Block]:
    """The fenced blocks of one Markdown page, with the marker comment just before each."""
    lines = page.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, lang = i, m.group(1)
        j = i + 1
        while j < len(lines) and lines[j].rstrip() != "```":
            j += 1
        if j == len(lines):
            raise AssertionError(f"{page.name}:{start + 1}: code fence never closed")
        k = start - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        mk = _MARKER.match(lines[k].strip()) if k >= 0 else None
        src = "\n".join(lines[start + 1 : j]) + "\n"
        blocks.append(
            Block(page, start + 1, lang, src, mk and mk.group(1), mk.group(2) if mk else "")
        )
        i = j + 1
    return blocks


BLOCKS = [b for p in PAGES for b in extract_blocks(p)]
PYTHON = [b for b in BLOCKS if b.lang == "python"]
BASH = [b for b in BLOCKS if b.lang == "bash"]


def _params(blocks, slow_marks=True):
    out = []
    for b in blocks:
        marks = []
        if b.marker == "slow" and slow_marks:
            marks.append(pytest.mark.slow)
        if b.marker == "skip":
            marks.append(pytest.mark.skip(reason=f"{b.id}: {b.reason}"))
        out.append(pytest.param(b, id=b.id, marks=marks))
    return out


def _code(b: Block):
    """The block compiled so that tracebacks name the page and its line numbers."""
    return compile("\n" * b.line + b.source, str(b.page), "exec")


def test_pages_have_blocks():
    """The extraction sees the pages (a renamed docs/ folder must not pass as 'no blocks')."""
    assert len(PYTHON) >= 15 and len(BASH) >= 15, (len(PYTHON), len(BASH))
    names = {b.page.name for b in BLOCKS}
    assert {"README.md", "training.md", "models.md", "inspect.md"} <= names, names


def test_markers_belong_to_blocks():
    """Every docs-test marker names slow or skip with a reason and stands before a block."""
    for page in PAGES:
        marked = {b.line for b in extract_blocks(page) if b.marker}
        lines = page.read_text().splitlines()
        for n, line in enumerate(lines, 1):
            if "docs-test" not in line:
                continue
            assert _MARKER.match(line.strip()), f"{page.name}:{n}: malformed marker {line!r}"
            nxt = next(k for k in range(n, len(lines)) if lines[k].strip())
            assert nxt + 1 in marked, f"{page.name}:{n}: marker not followed by a code block"


def test_readme_model_count():
    """The README's count of registered models is the registry's."""
    from jaxcnn import models

    m = re.search(r"(\d+) registered models", (ROOT / "README.md").read_text())
    assert m, "README.md: no 'N registered models'"
    assert int(m.group(1)) == len(models.list_models())


# -- python blocks ----------------------------------------------------------------------------
def _run_doctest(b: Block) -> None:
    """Runs a ``>>>`` block: each statement in turn; an expected ``Error: message`` line after
    a statement must be what it raises."""
    ns: dict = {"__name__": "__docs__"}
    lines = b.source.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        assert line.startswith(">>> "), f"{b.id}+{i + 1}: expected '>>> ', got {line!r}"
        stmt, n = line[4:], i
        i += 1
        while i < len(lines) and lines[i].startswith("... "):
            stmt += "\n" + lines[i][4:]
            i += 1
        expected = []
        while i < len(lines) and not lines[i].startswith(">>> "):
            expected.append(lines[i])
            i += 1
        code = compile("\n" * (b.line + n) + stmt, str(b.page), "single")
        err = re.match(r"(\w+(?:Error|Exception)): (.*)$", expected[0]) if expected else None
        if err is None:
            exec(code, ns)
            continue
        with pytest.raises(Exception) as info:
            exec(code, ns)
        name, message = err.groups()
        assert type(info.value).__name__ == name, (b.id, n + 1, info.value)
        prefix = message.split("(...)")[0].rstrip()
        assert str(info.value).startswith(prefix), (
            f"{b.id}+{n + 1}: the doc says {message!r}, the code says {str(info.value)!r}"
        )


def _wait_for(namespace: dict) -> None:
    """Blocks until every array the block left behind is computed: JAX dispatches
    asynchronously, so without this a block's last steps would run (and count) in the next
    test."""
    import jax

    for value in namespace.values():
        try:
            jax.block_until_ready(value)
        except Exception:  # not a pytree of arrays (a module, a function)
            pass


@pytest.mark.parametrize("block", _params(PYTHON))
def test_python_block(block: Block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if block.source.lstrip().startswith(">>>"):
        _run_doctest(block)
        return
    namespace = {"__name__": "__docs__"}
    exec(_code(block), namespace)
    _wait_for(namespace)


def _import_only(b: Block, jaxcnn_only: bool) -> str:
    """The block's top-level import statements, as source."""
    keep = []
    for node in ast.parse(b.source).body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            mod = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
            if not jaxcnn_only or (mod or "").split(".")[0] == "jaxcnn":
                keep.append(ast.get_source_segment(b.source, node))
    return "\n".join(keep) + "\n"


@pytest.mark.parametrize("block", [pytest.param(b, id=b.id) for b in PYTHON if b.marker])
def test_imports_of_marked_block(block: Block):
    """What a slow or skipped block imports exists (it runs in the default suite)."""
    source = _import_only(block, jaxcnn_only=block.marker == "skip")
    exec(compile(source, str(block.page), "exec"), {"__name__": "__docs__"})


# -- bash blocks ------------------------------------------------------------------------------
_ENGINE = {"experiments.train": "lenet_digits.py", "experiments.segment": "unet_canvas.py"}
_PLACEHOLDER = re.compile(r"(^|/)([A-Z]|<\w+>)\.py$|<\w+>|…")


def _commands(source: str) -> list[list[str]]:
    """Each ``python`` invocation in a shell block as its argument list (``python`` dropped);
    continuation lines joined, comments dropped, quoted sub-commands searched too, ``[--x]``
    (an optional argument in the doc's notation) read as ``--x``."""
    text = source.replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        out.extend(_python_calls(words))
    return out


def _python_calls(words: list[str]) -> list[list[str]]:
    out, i = [], 0
    while i < len(words):
        w = words[i]
        if " " in w and "python" in w:  # a quoted command (ssh --command "...")
            out.extend(_python_calls(shlex.split(w, comments=True)))
        elif re.fullmatch(r"(\S*/)?python3?", w):
            j = i + 1
            while j < len(words) and words[j] not in ("&&", "||", ";", "|"):
                j += 1
            out.append([a.strip("[]") for a in words[i + 1 : j]])
            i = j
            continue
        i += 1
    return out


def _script(argv: list[str]) -> tuple[str, pathlib.Path, list[str]]:
    """(module name, its source file, its arguments) of ``-m MODULE ...`` or ``path.py ...``."""
    if argv[0] == "-m":
        name = argv[1]
        spec = importlib.util.find_spec(name)
        assert spec is not None, f"no module {name}"
        if spec.submodule_search_locations:  # a package: python -m runs its __main__
            spec = importlib.util.find_spec(name + ".__main__")
            assert spec is not None, f"package {name} has no __main__"
        return name, pathlib.Path(spec.origin), argv[2:]
    path = ROOT / argv[0]
    assert argv[0].endswith(".py") and path.is_file(), f"no script {argv[0]}"
    return argv[0][:-3].replace("/", "."), path, argv[1:]


def _defined_flags(path: pathlib.Path) -> set[str]:
    """The ``--flags`` a script defines: argparse ``add_argument`` and absl ``DEFINE_*`` calls
    in its source (absl booleans also as ``--noNAME``), those of ``experiments/cli.py`` when
    it uses it, and those of ``experiments/bench_common.py`` (``--torch-python``) when it calls
    ``add_torch_python_args``."""
    sources = [path.read_text()]
    if re.search(r"\bfrom experiments import cli\b|\bexperiments\.cli\b", sources[0]):
        sources.append((ROOT / "experiments" / "cli.py").read_text())
    if re.search(r"\badd_torch_python_args\(", sources[0]):
        sources.append((ROOT / "experiments" / "bench_common.py").read_text())
    flags = {"--help"}
    for source in sources:
        for node in ast.walk(ast.parse(source)):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            strs = [a.value for a in node.args if isinstance(a, ast.Constant)]
            strs = [s for s in strs if isinstance(s, str)]
            if node.func.attr == "add_argument":
                flags.update(s for s in strs if s.startswith("-"))
            elif node.func.attr.startswith("DEFINE_") and strs:
                flags.add("--" + strs[0])
                if node.func.attr in ("DEFINE_bool", "DEFINE_boolean"):
                    flags.add("--no" + strs[0])
    return flags


def _config_file(args: list[str]) -> str | None:
    for i, a in enumerate(args):
        if a == "--config" and i + 1 < len(args):
            return args[i + 1]
        if a.startswith("--config="):
            return a.split("=", 1)[1]
    return None


def _load_config_keys(spec: str) -> set[str]:
    """Keys of ``get_config()`` (``path.py:arg`` passes ``arg``), as ml_collections reads it."""
    path, _, arg = spec.partition(":")
    s = importlib.util.spec_from_file_location("_docs_config", ROOT / path)
    mod = importlib.util.module_from_spec(s)
    s.loader.exec_module(mod)
    c = mod.get_config(arg) if arg else mod.get_config()
    return set(c.keys())


def _check_engine_command(name: str, args: list[str]) -> None:
    """The command line through the script's own parser and its overrides through the task's
    schema: what ``experiments.cli.main`` does before it builds the Trainer."""
    from experiments import cli
    from jaxcnn.train import config as config_lib

    overrides = [a for a in args if a.startswith("--config.")]
    parsed = cli.parser(name, _ENGINE[name]).parse_args(
        [a for a in args if not a.startswith("--config.")]
    )
    if _PLACEHOLDER.search(parsed.config):
        return
    cfg = cli.load_config_file(parsed.config)
    task = importlib.import_module(name)._task(cfg)
    fields = config_lib.schema(task.fields)
    cfg.update(config_lib.parse_overrides(overrides, fields))
    config_lib.validate(cfg, fields)


def _check_command(argv: list[str]) -> None:
    name, path, args = _script(argv)
    args = [re.sub(r"\$\w+", "0", a) for a in args]  # a shell variable: some valid value
    if ROOT not in path.parents or ".venv" in path.parts:
        return  # a third-party module (pytest, venv): that it exists is enough
    flags = _defined_flags(path)
    for a in args:
        if a.startswith("--") and not a.startswith("--config."):
            flag = a.split("=", 1)[0]
            assert flag in flags, f"{name} has no flag {flag} (it has {sorted(flags)})"
    if name in _ENGINE:
        _check_engine_command(name, args)
        return
    config = _config_file(args)
    if config is None or _PLACEHOLDER.search(config):
        return
    assert (ROOT / config.partition(":")[0]).is_file(), f"no config file {config}"
    keys = _load_config_keys(config)
    for a in args:
        if a.startswith("--config."):
            key = a[len("--config.") :].split("=", 1)[0]
            assert key in keys, f"{config} has no key {key!r}"


def _inline_commands(page: pathlib.Path) -> list[tuple[int, str]]:
    """(line, text) of each inline code span in the page's prose that runs ``python``."""
    text = page.read_text()
    prose = re.sub(r"^```.*?^```", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S | re.M)
    out = []
    for m in re.finditer(r"(?<!`)`([^`]+)`(?!`)", prose):
        if re.search(r"\bpython3? (-m \w|\S+\.py)", m.group(1)):
            out.append((prose.count("\n", 0, m.start()) + 1, m.group(1)))
    return out


INLINE = [(p, n, t) for p in PAGES for n, t in _inline_commands(p)]


@pytest.mark.parametrize(
    "page,line,text", [pytest.param(*c, id=f"{c[0].relative_to(ROOT)}:{c[1]}") for c in INLINE]
)
def test_inline_command(page, line, text):
    """A command quoted in the prose names a module or script that exists, with its flags."""
    for argv in _commands(text.replace("\n", " ")):
        argv = [a for a in argv if a not in ("...", "…")]
        try:
            _check_command(argv)
        except (AssertionError, SystemExit, Exception) as e:
            raise AssertionError(f"{page.name}:{line}: python {shlex.join(argv)}: {e!r}") from e


@pytest.mark.parametrize("block", _params(BASH, slow_marks=False))
def test_bash_block(block: Block):
    commands = _commands(block.source)
    if not commands:
        pytest.skip(f"{block.id}: no python command in the block")
    for argv in commands:
        try:
            _check_command(argv)
        except (AssertionError, SystemExit, Exception) as e:
            raise AssertionError(f"{block.id}: python {shlex.join(argv)}: {e!r}") from e
