"""The book renders: it builds without a warning, every page is themed and works
offline, and in a real browser the chapter and the preface are not blank.

The build does not execute the chapters (their outputs are committed, and nbval
checks them): it is the project's _config.yml and _toc.yml with execution turned
off, written to a temporary directory with the output. The checks themselves live
in tests/render_check.py, which can also be run on the result of `make book`.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import render_check  # noqa: E402

ROOT = render_check.ROOT
CHAPTER = "chapters/01-namespaces.html"
INTRO = "book/intro.html"

needs_chromium = pytest.mark.skipif(
    render_check.chromium() is None,
    reason="chromium is not installed (lab/host-setup.sh --test installs it)")


@pytest.fixture(scope="module")
def book() -> Path:
    """The book, built once for this module into a temporary directory."""
    with tempfile.TemporaryDirectory(prefix="mini-docker-book-") as out:
        try:
            html, _ = render_check.build_book(ROOT, Path(out))
        except RuntimeError as err:
            failure = str(err)
        else:
            failure = ""
        if failure:
            pytest.fail(failure, pytrace=False)
        yield html


# --- the build ---------------------------------------------------------------------


@pytest.mark.slow
def test_book_builds_without_warnings_or_execution(book):
    """build_book has already failed the test on any warning; here, what it made."""
    for page in ("index.html", INTRO, "book/lab-setup.html", "book/glossary.html", CHAPTER):
        assert (book / page).is_file(), f"{page} was not built"


@pytest.mark.slow
def test_every_page_is_themed_and_offline(book):
    problems = render_check.check_book(book)
    assert not problems, "\n".join(problems)


@pytest.mark.slow
def test_the_architecture_figure_is_in_the_preface(book):
    html = (book / INTRO).read_text()
    images = render_check.page_assets(html).images
    figure = [src for src in images if src.endswith("architecture.svg")]
    assert figure, f"the preface shows no architecture.svg (images: {images})"
    assert (book / "book" / figure[0]).resolve().is_file()


@pytest.mark.slow
@needs_chromium
@pytest.mark.parametrize("page", [CHAPTER, INTRO])
def test_page_renders_in_chromium(book, tmp_path, page):
    png = tmp_path / "page.png"
    render_check.screenshot(book / page, png)
    problems = render_check.check_screenshot(png)
    assert not problems, "\n".join(problems)


# --- the checker can fail ------------------------------------------------------------
# Fast tests proving each check above rejects what it is meant to reject.

THEMED = ('<html><head><link rel="stylesheet" href="{css}"/>{extra}</head>'
          '<body class="sphinx-book-theme"><div class="bd-sidebar-primary"></div>'
          '<article class="bd-article"><img src="{img}"/></article></body></html>')


def _site(tmp_path: Path, css: str = "_static/book.css", img: str = "_images/fig.svg",
          extra: str = "") -> Path:
    (tmp_path / "_static").mkdir()
    (tmp_path / "_static" / "book.css").write_text("body {}")
    (tmp_path / "_images").mkdir()
    (tmp_path / "_images" / "fig.svg").write_text("<svg/>")
    (tmp_path / "page.html").write_text(THEMED.format(css=css, img=img, extra=extra))
    return tmp_path


def test_check_accepts_a_complete_themed_page(tmp_path):
    site = _site(tmp_path)
    assert render_check.check_book(site) == []


def test_check_rejects_a_missing_asset(tmp_path):
    site = _site(tmp_path, img="_images/gone.png")
    assert any("_images/gone.png is missing" in p for p in render_check.check_book(site))


@pytest.mark.parametrize("extra", [
    '<script src="https://cdn.example.com/mathjax.js"></script>',
    '<link rel="stylesheet" href="//fonts.example.com/font.css"/>',
])
def test_check_rejects_a_remote_script_or_stylesheet(tmp_path, extra):
    site = _site(tmp_path, extra=extra)
    assert any("from the network" in p for p in render_check.check_book(site))


def test_check_allows_remote_links_and_data_urls(tmp_path):
    site = _site(tmp_path, img="data:image/png;base64,AAAA",
                 extra='<a href="https://multipass.run">multipass</a>')
    assert render_check.check_book(site) == []


def test_check_rejects_an_unthemed_page(tmp_path):
    (tmp_path / "page.html").write_text("<html><body><h1>Bare</h1></body></html>")
    problems = render_check.check_book(tmp_path)
    assert any("sphinx-book-theme" in p for p in problems)


def test_check_follows_the_index_redirect(tmp_path):
    site = _site(tmp_path)
    (site / "index.html").write_text('<meta http-equiv="Refresh" content="0; url=page.html" />')
    assert render_check.check_book(site) == []
    (site / "index.html").write_text('<meta http-equiv="Refresh" content="0; url=gone.html" />')
    assert any("redirects to gone.html" in p for p in render_check.check_book(site))


def test_check_rejects_a_blank_screenshot(tmp_path):
    from PIL import Image

    blank = tmp_path / "blank.png"
    Image.new("RGB", (1280, 1600), "white").save(blank)
    assert any("looks blank" in p for p in render_check.check_screenshot(blank))
    assert render_check.check_screenshot(tmp_path / "none.png")


def test_offline_config_only_turns_execution_off(tmp_path):
    written = yaml.safe_load(render_check.offline_config(ROOT, tmp_path / "c.yml").read_text())
    original = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert written["execute"].pop("execute_notebooks") == "off"
    original["execute"].pop("execute_notebooks", None)
    assert written == original


def test_architecture_figure_is_wellformed_svg():
    svg = ROOT / "book" / "figures" / "architecture.svg"
    root = ET.parse(svg).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    text = " ".join("".join(t.itertext()) for t in root.iter("{http://www.w3.org/2000/svg}text"))
    for part in ("docker CLI", "REST API", "dockerd", "containerd", "shim", "runc",
                 "Linux kernel", "namespaces", "cgroups"):
        assert part in text, f"the figure has no '{part}'"
    for package in ("cli/", "api/", "engine/", "runtime/", "kernel/", "cgroups/", "image/"):
        assert package in text, f"the figure does not name {package}"


def test_render_check_script_reports_a_missing_build(tmp_path):
    done = subprocess.run(
        [sys.executable, str(Path(render_check.__file__)), str(tmp_path / "_build" / "html"),
         str(tmp_path / "out.png")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "build the book first" in done.stderr
    assert "Traceback" not in done.stderr


def test_no_page_links_to_a_page_that_does_not_exist():
    """The preface names later chapters in plain text: it links only to pages in the toc."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = {toc["root"]} | {c["file"] for part in toc["parts"] for c in part["chapters"]}
    for name in ("intro", "lab-setup", "glossary"):
        page = ROOT / "book" / f"{name}.md"
        for target in _doc_links(page.read_text()):
            resolved = (page.parent / target).resolve().relative_to(ROOT)
            assert str(resolved.with_suffix("")) in files, f"{page.name} links to {target}"


def _doc_links(text: str) -> list[str]:
    return [m.group(1) for m in re.finditer(r"\{doc\}`(?:[^`<]*<)?([^`>]+)>?`", text)]
