"""Check that the built book renders: themed, complete, offline.

A book that builds without warnings can still be broken in a browser: a stylesheet
that did not get copied, a script fetched from a CDN (the lab may be offline), a
theme that failed to load and left bare HTML. This module looks at the result the
way a reader would. It checks the HTML of every page for the theme's markers and
for assets that are missing or remote, and it has headless Chromium take a
screenshot of a page, which must not be blank.

Two ways to use it:

    python tests/render_check.py _build/html OUT.png [--page chapters/01-namespaces.html]

checks a book that `make book` built, and tests/test_book_render.py builds the book
itself (without executing the chapters: their outputs are committed) and runs the
same checks.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import yaml

ROOT = Path(__file__).resolve().parents[1]

# Chromium's own switches for a quiet, reproducible, offline screenshot.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--hide-scrollbars",
]

# What sphinx-book-theme leaves in every page it renders.
THEME_MARKERS = [
    "sphinx-book-theme",   # its stylesheet and script names
    "bd-sidebar-primary",  # the left navigation
    "bd-article",          # the page's content
]


def chromium() -> str | None:
    """The Chromium binary on this host, if there is one."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


# --- building -----------------------------------------------------------------


def offline_config(root: Path, dest: Path) -> Path:
    """Write the book's _config.yml to dest, with notebook execution turned off."""
    config = yaml.safe_load((root / "_config.yml").read_text())
    config.setdefault("execute", {})["execute_notebooks"] = "off"
    dest.write_text(yaml.safe_dump(config, sort_keys=False))
    return dest


def jupyter_book() -> str:
    """The jupyter-book next to this Python (the venv's), else the project's venv's."""
    for candidate in (Path(sys.executable).parent / "jupyter-book",
                      ROOT / ".venv" / "bin" / "jupyter-book"):
        if candidate.is_file():
            return str(candidate)
    return shutil.which("jupyter-book") or "jupyter-book"


def build_book(root: Path, out: Path, toc: Path | None = None) -> tuple[Path, str]:
    """Build the book at root into out without executing it; return (html dir, log).

    Raises RuntimeError, with the build's log, when the build fails or warns.
    """
    config = offline_config(root, out / "_config.yml")
    cmd = [jupyter_book(), "build", "--all", "-W", "--keep-going",
           "--config", str(config), "--path-output", str(out)]
    if toc is not None:
        cmd += ["--toc", str(toc)]
    cmd.append(str(root))
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    log = ANSI_ESCAPE.sub("", done.stdout + done.stderr)
    if done.returncode != 0 or "WARNING" in log:
        raise RuntimeError(f"jupyter-book build failed (exit {done.returncode}):\n"
                           f"{_build_problems(log)}")
    return out / "_build" / "html", log


ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


def _build_problems(log: str, tail: int = 40) -> str:
    """The warnings and errors of a build log, or its end when there are none."""
    lines = log.splitlines()
    wanted = [line for line in lines
              if re.search(r"WARNING|ERROR|[Ee]rror:|Exception|does not exist", line)]
    return "\n".join(wanted or lines[-tail:])


# --- reading a page -------------------------------------------------------------


@dataclass
class PageAssets:
    """What one HTML page asks the browser to load."""

    stylesheets: list[str] = field(default_factory=list)
    scripts: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    other: list[str] = field(default_factory=list)  # icons, preloads


class _AssetParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.assets = PageAssets()
        self.redirect: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "meta" and a.get("http-equiv", "").lower() == "refresh":
            # index.html is a redirect to the root page: "0; url=book/intro.html"
            _, _, url = a.get("content", "").partition("url=")
            self.redirect = url.strip()
        elif tag == "link" and a.get("href"):
            rel = a.get("rel", "").lower().split()
            if "stylesheet" in rel or a.get("as") == "style":
                self.assets.stylesheets.append(a["href"])
            elif a.get("as") == "script":
                self.assets.scripts.append(a["href"])
            elif {"icon", "preload", "shortcut"} & set(rel):
                self.assets.other.append(a["href"])
        elif tag == "script" and a.get("src"):
            self.assets.scripts.append(a["src"])
        elif tag in ("img", "source", "embed") and a.get("src"):
            self.assets.images.append(a["src"])
        elif tag == "object" and a.get("data"):
            self.assets.images.append(a["data"])


def page_assets(html: str) -> PageAssets:
    parser = _AssetParser()
    parser.feed(html)
    return parser.assets


def page_redirect(html: str) -> str | None:
    """Where a page that only redirects (a meta refresh) sends the browser."""
    parser = _AssetParser()
    parser.feed(html)
    return parser.redirect


def _is_remote(url: str) -> bool:
    return urlsplit(url).scheme in ("http", "https") or url.startswith("//")


def check_page(html_dir: Path, page: Path) -> list[str]:
    """Problems with one built page: theme markers, remote or missing assets."""
    html = page.read_text(encoding="utf-8")
    name = page.relative_to(html_dir)
    redirect = page_redirect(html)
    if redirect is not None:
        if _is_remote(redirect) or not (page.parent / urlsplit(redirect).path).is_file():
            return [f"{name}: redirects to {redirect}, which is not in the build"]
        return []
    problems = [f"{name}: no '{m}' (is sphinx-book-theme applied?)"
                for m in THEME_MARKERS if m not in html]
    assets = page_assets(html)
    for url in assets.stylesheets + assets.scripts:
        if _is_remote(url):
            problems.append(f"{name}: loads {url} from the network; the book must work offline")
    for url in assets.stylesheets + assets.scripts + assets.images + assets.other:
        parts = urlsplit(url)
        if _is_remote(url) or parts.scheme in ("data", "mailto", "javascript"):
            continue
        target = (page.parent / unquote(parts.path)).resolve()
        if not target.is_file():
            problems.append(f"{name}: {url} is missing from the build")
    return problems


def check_book(html_dir: Path) -> list[str]:
    """Problems with every page of a built book."""
    pages = sorted(p for p in html_dir.rglob("*.html")
                   if "_static" not in p.parts and p.name not in ("search.html", "genindex.html"))
    if not pages:
        return [f"{html_dir}: no HTML pages"]
    problems = []
    for page in pages:
        problems += check_page(html_dir, page)
    return problems


# --- looking at a page ----------------------------------------------------------


def screenshot(page: Path, png: Path, width: int = 1280, height: int = 1600) -> None:
    """Have headless Chromium render page (a local file) to png."""
    browser = chromium()
    if browser is None:
        raise RuntimeError("chromium is not installed")
    png.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="render-check-chromium-") as profile:
        done = subprocess.run(
            [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
             f"--screenshot={png}", f"--window-size={width},{height}",
             "--virtual-time-budget=5000", page.resolve().as_uri()],
            capture_output=True, text=True, timeout=120,
        )
    if not png.is_file():
        raise RuntimeError(f"chromium wrote no screenshot (exit {done.returncode}):\n"
                           f"{done.stderr[-2000:]}")


def distinct_colours(png: Path) -> int:
    """How many different colours the image has: a blank page has one or two."""
    from PIL import Image

    with Image.open(png) as img:
        colours = img.convert("RGB").getcolors(maxcolors=1 << 24)
    return len(colours or [])


def check_screenshot(png: Path, min_colours: int = 200, min_bytes: int = 20_000) -> list[str]:
    """Problems with a screenshot: missing, tiny, or (nearly) one colour."""
    if not png.is_file():
        return [f"{png}: no screenshot"]
    problems = []
    if png.stat().st_size < min_bytes:
        problems.append(f"{png}: only {png.stat().st_size} bytes")
    colours = distinct_colours(png)
    if colours < min_colours:
        problems.append(f"{png}: only {colours} colours; the page looks blank")
    return problems


# --- as a script ----------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Check a built book: theme, offline assets, and a screenshot of one page.")
    parser.add_argument("html_dir", type=Path, help="the built book, e.g. _build/html")
    parser.add_argument("png", type=Path, help="where to write the screenshot")
    parser.add_argument("--page", default="chapters/01-namespaces.html",
                        help="the page to screenshot, relative to html_dir")
    args = parser.parse_args(argv)

    page = args.html_dir / args.page
    if not page.is_file():
        print(f"render_check: {page} does not exist; build the book first (make book)",
              file=sys.stderr)
        return 2
    problems = check_book(args.html_dir)
    try:
        screenshot(page, args.png)
    except (RuntimeError, subprocess.TimeoutExpired) as err:
        problems.append(f"screenshot: {err}")
    else:
        problems += check_screenshot(args.png)
    for problem in problems:
        print(f"render_check: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(f"render_check: {args.html_dir} is fine; {page.name} is in {args.png} "
          f"({distinct_colours(args.png)} colours)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
