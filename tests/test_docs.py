"""Every ```bash and ```python block of README.md and docs/*.md runs here, so the docs cannot rot.

How a block runs:

- each Markdown file gets one temporary folder, the working directory of its blocks, which run in the
  file's order (a block may use what an earlier one wrote: ``correct --from runs/stamp``); selecting one
  block (``-k``) runs the earlier blocks of its file first;
- ``bash``: line continuations joined, comments dropped, ``&&`` splits commands. ``jaxbias ...`` runs in
  process (:func:`jaxbias.cli.main`) with budget flags cut to quick values (:func:`quick_argv`) and must
  exit 0; ``pip install``, ``python3 -m venv`` and ``. .venv/bin/activate`` are checked for form only, and
  the test command must be the one ``.ci/run`` runs; ``python <script>`` runs in a subprocess;
- ``python``: executed in a fresh namespace (the examples choose small settings themselves);
- a ``toml`` block whose first line is ``# NAME.toml ...`` is written to NAME.toml for the blocks after it;
- the offline MNIST sample is cut to 100 digits per class (``fewer_digits``), and the Adult file the docs
  name (``../shared/data/adult.data``) is replaced by a small synthetic one.

An HTML comment right before a block changes that: ``<!-- docs-test: skip (REASON) -->`` (a reason is
required: data that are not available offline, more devices) or ``<!-- docs-test: slow -->`` (runs only
under ``-m slow``).
"""
from __future__ import annotations

import dataclasses
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN_LANGS = {"bash", "python"}
MARK = re.compile(r"<!--\s*docs-test:\s*(\w+)\s*(?:\((.*?)\))?\s*-->")
FENCE = re.compile(r"^```(\w*)\s*$")
#: The README's and CI's test command (.ci/run runs exactly this).
TEST_COMMAND = 'python -m pytest -q -m "not slow" -n auto --dist loadfile'
#: flag -> the value a docs run uses instead (budgets only; everything else runs as written).
QUICK_FLAGS = {"--epochs": "1", "--seeds": "1", "--external": "20", "--top-k": "20"}
#: commands that take --no-progress
PROGRESS = {"demo", "train", "sweep", "correct", "attribute"}


@dataclasses.dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    mark: str | None = None  # "skip" | "slow" | None
    reason: str | None = None

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks_of(path: Path) -> list[Block]:
    """The fenced blocks of a Markdown file, each with the docs-test mark of the comment right before it."""
    out, lines = [], path.read_text().splitlines()
    i, pending = 0, None
    while i < len(lines):
        line = lines[i]
        m = MARK.search(line)
        if m:
            pending = (m.group(1), m.group(2))
        fence = FENCE.match(line)
        if fence:
            start, body = i, []
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            mark, reason = pending or (None, None)
            out.append(Block(path, start + 1, fence.group(1), "\n".join(body) + "\n", mark, reason))
            pending = None
        elif line.strip() and not m:
            pending = None  # a mark applies to the block right after it only
        i += 1
    return out


ALL = [b for p in DOCS for b in blocks_of(p)]
RUNNABLE = [b for b in ALL if b.lang in RUN_LANGS]


def test_the_docs_have_blocks_and_every_mark_is_known_with_a_reason():
    assert len(DOCS) > 5 and len(RUNNABLE) > 10
    for b in ALL:
        assert b.mark in (None, "skip", "slow"), f"{b.id}: unknown docs-test mark {b.mark!r}"
        if b.mark is not None:
            assert b.lang in RUN_LANGS, f"{b.id}: a docs-test mark before a {b.lang or 'plain'} block"
        if b.mark == "skip":
            assert b.reason and b.reason.strip(), f"{b.id}: a skipped block must say why: docs-test: skip (REASON)"
    skipped = [b.id for b in RUNNABLE if b.mark == "skip"]
    assert len(skipped) <= 3, f"keep skips few: {skipped}"


def test_the_readme_test_command_is_the_one_ci_runs():
    assert TEST_COMMAND in (ROOT / ".ci" / "run").read_text()
    assert any(TEST_COMMAND in b.code for b in blocks_of(ROOT / "README.md") if b.lang == "bash")


# --------------------------------------------------------------------------- #
# running a block
# --------------------------------------------------------------------------- #

def commands(code: str) -> list[list[str]]:
    """A bash block as argv lists: continuations joined, comments dropped, ``&&`` and lines split."""
    joined = re.sub(r"\\\n", " ", code)
    out = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        cmd = []
        for w in words + ["&&"]:
            if w == "&&":
                if cmd:
                    out.append(cmd)
                cmd = []
            else:
                cmd.append(w)
    return out


def quick_argv(argv: list[str], adult: Path) -> list[str]:
    """``jaxbias ARGS`` with budgets cut (:data:`QUICK_FLAGS`), ``demo --quick``, no progress bars, and the
    small Adult file for ``../shared/data/adult.data``."""
    out = list(argv)
    for i, w in enumerate(out[:-1]):
        if w in QUICK_FLAGS and out[i + 1] != "0" and "," not in out[i + 1]:
            out[i + 1] = QUICK_FLAGS[w]
        if w == "--data-path" and out[i + 1].endswith("adult.data"):
            out[i + 1] = str(adult)
    if out and out[0] == "demo" and "--quick" not in out:
        out.append("--quick")
    if out and out[0] in PROGRESS:
        out.append("--no-progress")
    return out


def run_bash(block: Block, adult: Path) -> None:
    from jaxbias.cli import main

    for argv in commands(block.code):
        text = shlex.join(argv)
        if argv[:2] == ["pip", "install"]:  # checked for form only
            assert argv[2:] in (["-e", "."], ["-e", ".[test]"]), f"{block.id}: unexpected install {text}"
        elif argv[:3] == ["python3", "-m", "venv"] or argv[:1] == ["."]:
            assert argv[-1] in (".venv", ".venv/bin/activate"), f"{block.id}: unexpected venv line {text}"
        elif argv[:3] == ["python", "-m", "pytest"]:
            assert text == shlex.join(shlex.split(TEST_COMMAND)), f"{block.id}: the test command is not CI's: {text}"
        elif argv[0] == "jaxbias":
            quick = quick_argv(argv[1:], adult)
            assert main(quick) == 0, f"{block.id}: `jaxbias {shlex.join(quick)}` failed"
        elif argv[0] == "python" and argv[1].endswith(".py"):
            subprocess.run([sys.executable, str(ROOT / argv[1]), *argv[2:]], check=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
        else:
            raise AssertionError(f"{block.id}: the docs test does not know how to run {text!r}")


def run_python(block: Block) -> None:
    namespace = {"__name__": "__docs__"}
    # the docs' own examples, run as a script would (dont_inherit: not under this file's __future__ flags)
    exec(compile(block.code, block.id, "exec", dont_inherit=True), namespace)  # noqa: S102


def write_toml(block: Block) -> None:
    first = block.code.splitlines()[0]
    m = re.match(r"#\s*(\S+\.toml)\b", first)
    if m:
        Path(m.group(1)).write_text(block.code)


#: Markdown file -> (its folder, the line numbers of its blocks already run)
_STATE: dict[Path, tuple[Path, set[int]]] = {}


def adult_file(path: Path, n: int = 600, seed: int = 0) -> Path:
    """Synthetic Adult records (both labels, both sexes), as tests/test_reliability.py writes them."""
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        sex = "Male" if i % 3 else "Female"
        edu = int(rng.integers(1, 17))
        rec = [int(rng.integers(17, 90)), "Private", int(rng.integers(1e4, 1e6)), "Bachelors", edu, "Divorced",
               "Sales", "Husband", "White", sex, 0, 0, int(rng.integers(10, 60)), "United-States"]
        lines.append(", ".join(str(v) for v in rec) + (", >50K" if edu > 8 else ", <=50K"))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def adult(tmp_path_factory):
    return adult_file(tmp_path_factory.mktemp("adult") / "adult.data")


def _run(block: Block, adult: Path) -> None:
    if block.lang == "bash":
        run_bash(block, adult)
    elif block.lang == "python":
        run_python(block)
    elif block.lang == "toml":
        write_toml(block)


def _params():
    for b in RUNNABLE:
        if b.mark == "skip":
            continue  # the reason is checked above
        marks = [pytest.mark.slow] if b.mark == "slow" else []
        yield pytest.param(b, id=b.id, marks=marks)


@pytest.mark.usefixtures("fewer_digits")
@pytest.mark.parametrize("block", list(_params()))
def test_block_runs(block: Block, tmp_path_factory, monkeypatch, adult):
    folder, done = _STATE.setdefault(block.path, (tmp_path_factory.mktemp(block.path.stem), set()))
    monkeypatch.chdir(folder)
    for earlier in blocks_of(block.path):  # what this block may need: the file's earlier blocks, in order
        if earlier.line >= block.line:
            break
        if earlier.line in done or earlier.mark in ("skip", "slow") or earlier.lang not in RUN_LANGS | {"toml"}:
            continue
        done.add(earlier.line)  # tried once: a failure is reported by its own test, not repeated here
        _run(earlier, adult)
    done.add(block.line)
    _run(block, adult)
