"""The documentation: README.md's Python runs, every relative link resolves, the
README stays short and starts with the demo and the test command, and the
generated tables match the committed result files."""

import importlib.util
import pathlib
import re

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_README_LINES = 250

FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
# [text](target): not images' alt text rules, just the target; code spans are
# removed before matching, so `[x](y)` inside backticks is not a link.
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)


def code_blocks(text: str, language: str | None = None) -> list[str]:
  """The fenced code blocks of a markdown text, in order (only ``language``'s)."""
  return [body for lang, body in FENCE.findall(text) if language in (None, lang)]


def slug(heading: str) -> str:
  """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to '-'."""
  text = re.sub(r"`|\*\*|\*", "", heading).strip().lower()
  text = re.sub(r"[^\w\- ]", "", text)
  return text.replace(" ", "-")


def anchors(path: pathlib.Path) -> set[str]:
  text = FENCE.sub("", path.read_text())
  return {slug(h) for h in HEADING.findall(text)}


def broken_links(page: pathlib.Path) -> list[str]:
  """Every relative link of ``page`` whose file (or #anchor) does not exist."""
  text = FENCE.sub("", page.read_text())
  text = re.sub(r"`[^`\n]*`", "", text)
  broken = []
  for target in LINK.findall(text):
    if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
      continue
    path, _, anchor = target.partition("#")
    resolved = (page.parent / path).resolve() if path else page
    if not resolved.exists():
      broken.append(f"{target} (no such file)")
    elif anchor and (resolved.is_dir() or anchor not in anchors(resolved)):
      broken.append(f"{target} (no heading #{anchor})")
  return broken


def doc_pages() -> list[pathlib.Path]:
  return [README, ROOT / "BUILD.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _make_tables():
  spec = importlib.util.spec_from_file_location(
      "make_tables", ROOT / "docs" / "results" / "make_tables.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_readme_python_blocks_run_in_order(tmp_path, monkeypatch):
  """Every ```python block of the README, in one namespace, as a reader would
  paste them. The blocks use tiny configs (shipped names only in comments), so
  they run as written; their own asserts check the round trips."""
  blocks = code_blocks(README.read_text(), "python")
  assert len(blocks) >= 3, "the README shows the Codec, EntropyCoder and training-loop APIs"
  monkeypatch.chdir(tmp_path)
  namespace = {"__name__": "__readme__"}
  for i, block in enumerate(blocks):
    exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)  # noqa: S102
  # What the blocks claim, beyond their own asserts.
  assert namespace["stream"][:4] == b"M2TJ"
  assert namespace["image"].shape == namespace["photo"].shape
  assert np.isfinite(float(namespace["loss"]))


def test_every_relative_link_resolves():
  pages = doc_pages()
  assert len(pages) > 10
  broken = {str(p.relative_to(ROOT)): b for p in pages if (b := broken_links(p))}
  assert not broken


def test_link_checker_finds_missing_files_and_anchors(tmp_path):
  (tmp_path / "other.md").write_text("# Title\n\n## A section: with `code`\n")
  page = tmp_path / "page.md"
  page.write_text("[ok](other.md#a-section-with-code) [top](#here) [web](https://x.org/y)\n"
                  "`[not a link](nowhere.md)`\n\n# Here\n\n"
                  "[gone](missing.md) [bad anchor](other.md#nope)\n"
                  "```\n[in code](nowhere.md)\n```\n")
  assert broken_links(page) == ["missing.md (no such file)",
                                "other.md#nope (no heading #nope)"]


def test_readme_is_short_and_starts_with_demo_and_tests():
  text = README.read_text()
  assert len(text.splitlines()) <= MAX_README_LINES
  first = code_blocks(text)[0]
  assert "m2t demo" in first
  # The test command CI runs is the README's, verbatim.
  ci = (ROOT / ".ci" / "run").read_text().splitlines()
  command = next(line for line in ci if line.startswith("python -m pytest"))
  assert command == "python -m pytest -q -n 2 --dist loadfile tests"
  assert command in first


def test_readme_has_no_dates_hashes_or_outside_pointers():
  text = README.read_text()
  assert not re.findall(r"\b20\d\d-\d\d-\d\d\b", text)
  hashes = [w for w in re.findall(r"\b[0-9a-f]{7,40}\b", text)
            if re.search(r"\d", w) and re.search(r"[a-f]", w)]
  assert not hashes
  for page in doc_pages():
    body = page.read_text()
    for outside in ("../shared", "SEED_MODELS", "M2T_SPEC", "DESIGN.md"):
      assert outside not in body, f"{page.name} points outside the repository: {outside}"


def test_generated_tables_match_the_result_files():
  make_tables = _make_tables()
  stale = [str(p.relative_to(ROOT)) for p in make_tables.pages()
           if make_tables.render(p.read_text()) != p.read_text()]
  assert not stale, "run python docs/results/make_tables.py"
  used = set()
  for page in make_tables.pages():
    used |= set(m.group(2) for m in make_tables.MARKER.finditer(page.read_text()))
  assert used == set(make_tables.TABLES), "every generator has a page, every marker a generator"


def test_generated_table_changes_with_its_file(monkeypatch, tmp_path):
  """A table is read from its file: another file gives another table."""
  make_tables = _make_tables()
  page = "<!-- table:fuzz -->\n<!-- /table -->\n"
  before = make_tables.render(page)
  assert "| **all** | 7393 |" in before.replace("  ", " ")
  results = tmp_path / "results"
  results.mkdir()
  data = (make_tables.RESULTS / "fuzz.json").read_text().replace('"decoded-same": 667',
                                                                  '"decoded-same": 666')
  (results / "fuzz.json").write_text(data)
  monkeypatch.setattr(make_tables, "RESULTS", results)
  after = make_tables.render(page)
  assert after != before and "| 666 |" in after
  with pytest.raises(KeyError):
    make_tables.render("<!-- table:no-such-table -->\n<!-- /table -->\n")
