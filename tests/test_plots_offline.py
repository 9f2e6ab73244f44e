"""`dvc plots show` draws its charts with no network: the HTML template that .dvc/config names carries Vega inline
(plots/template/build.py). Checked in headless Chromium with name resolution cut, against DVC's own template,
which loads Vega from a CDN and so draws nothing offline."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml
from dvc_render.vega import VegaRenderer
from PIL import Image

from tests.conftest import REPO_ROOT

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium or chromium-browser on PATH (apt-get install chromium)"
)
TEMPLATE = REPO_ROOT / "plots" / "template" / "offline.html"
# Every element Vega draws a view into; one per chart, whichever renderer (canvas or svg) vega-embed picked.
MARKS = re.compile(r"<(?:canvas|svg)\b[^>]*\bclass=\"marks\"")


def load_build_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("plots_template_build", REPO_ROOT / "plots/template/build.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def vega_plots() -> dict[str, list[Path]]:
    """The charts dvc.yaml defines (not the images), each with the data files it reads."""
    plots = {}
    for entry in yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["plots"]:
        if not isinstance(entry, dict):
            continue  # a bare path: an image, which needs no Vega
        ((name, spec),) = entry.items()
        files = [f for axis in ("x", "y") if isinstance(spec.get(axis), dict) for f in spec[axis]]
        plots[name] = [REPO_ROOT / f for f in files]
    return plots


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 120) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, dict[str, Path]]:
    """`dvc plots show` in a copy of the repo's plots, with its template and with DVC's default one: for each, the
    whole page and a page of the Vega charts alone (images show in any template, so a screenshot skips them)."""
    missing = [str(f.relative_to(REPO_ROOT)) for files in vega_plots().values() for f in files if not f.is_file()]
    assert not missing, f"the committed plot data that dvc.yaml's plots read is missing: {missing}"
    root = tmp_path_factory.mktemp("project")
    shutil.copy(REPO_ROOT / "dvc.yaml", root / "dvc.yaml")
    shutil.copytree(REPO_ROOT / "plots", root / "plots", ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    run(["git", "init", "-q"], root, env)
    run(["dvc", "init", "-q"], root, env)
    shutil.copy(REPO_ROOT / ".dvc" / "config", root / ".dvc" / "config")  # the template path, as committed

    out = tmp_path_factory.mktemp("pages")
    pages = {}
    for template in ("offline", "default"):
        if template == "default":
            run(["dvc", "config", "--unset", "plots.html_template"], root, env)
        full, charts = out / template / "full", out / template / "charts"
        run(["dvc", "plots", "show", "-o", str(full)], root, env)
        run(["dvc", "plots", "show", "-o", str(charts), *vega_plots()], root, env)
        pages[template] = {"full": full / "index.html", "charts": charts / "index.html"}
    return pages


def browse(page: Path, profile: Path, screenshot: Path | None = None) -> str:
    """The DOM of page once headless Chromium, which can resolve no host name, has run its scripts."""
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",  # Chromium's sandbox refuses to run as root, as CI does
        "--disable-gpu",
        "--no-first-run",
        "--no-proxy-server",  # a proxy from the environment would otherwise resolve names for it
        "--host-resolver-rules=MAP * ~NOTFOUND",
        f"--user-data-dir={profile}",
        "--window-size=1280,1024",
        # Virtual time runs as fast as the page lets it; the budget is how long Vega may take to draw.
        "--virtual-time-budget=15000",
        "--dump-dom",
    ]
    if screenshot is not None:
        cmd.append(f"--screenshot={screenshot}")
    result = subprocess.run([*cmd, page.as_uri()], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"chromium failed on {page}:\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def browsed(rendered, tmp_path_factory) -> dict[str, dict[str, str | Path]]:
    """For each template: the whole page's DOM after Vega ran, and a screenshot of the charts page."""
    out = tmp_path_factory.mktemp("browser")
    seen = {}
    for template, pages in rendered.items():
        shot = out / f"{template}.png"
        browse(pages["charts"], out / f"{template}-charts-profile", screenshot=shot)
        seen[template] = {"dom": browse(pages["full"], out / f"{template}-full-profile"), "screenshot": shot}
    return seen


def pixel_stats(path: Path) -> tuple[float, float, int]:
    """Shares of non-white and of coloured (not grey) pixels, and the number of coarse colours among them."""
    image = Image.open(path).convert("RGB")
    colours = image.getcolors(image.width * image.height)
    total = image.width * image.height
    ink = [(n, rgb) for n, rgb in colours if min(rgb) < 235]
    coloured = sum(n for n, rgb in ink if max(rgb) - min(rgb) > 60)  # line colours; text, axes and grid are grey
    bins = {tuple(c // 32 for c in rgb) for _, rgb in ink}
    return sum(n for n, _ in ink) / total, coloured / total, len(bins)


def test_template_inlines_the_versions_dvc_render_would_load():
    template = TEMPLATE.read_text(encoding="utf-8")
    wanted = re.findall(r"/npm/([\w-]+)@([\w.-]+)", VegaRenderer.SCRIPTS)
    assert {name for name, _ in wanted} == {"vega", "vega-lite", "vega-embed"}
    for name, version in wanted:
        assert f"<script>/* {name}@{version} build/" in template, f"{name}@{version} is not inlined; rebuild it"
    assert template.count("{plot_divs}") == 1 and "{scripts}" not in template
    assert not re.search(r"<script[^>]*\bsrc=", template)


def test_inlined_code_can_neither_end_its_tag_nor_be_filled_in():
    build = load_build_script()
    package = build.PACKAGES[0]
    tag = build.script_tag(package, 'var s = "</SCRIPT><b>"; var t = /<\\/script>/;')
    assert tag.lower().count("</script") == 1 and tag.endswith("</script>")  # only its own end
    for placeholder in ("{plot_divs}", "{scripts}", "{refresh_tag}"):
        with pytest.raises(RuntimeError, match=re.escape(placeholder)):
            build.script_tag(package, f'var s = "{placeholder}";')
    with pytest.raises(ValueError, match="vega-lite"):
        build.check_versions(scripts='<script src="https://cdn.jsdelivr.net/npm/vega-lite@9.9.9"></script>')


@pytest.mark.integration
def test_offline_page_names_no_url_to_load(rendered):
    offline = rendered["offline"]["full"].read_text(encoding="utf-8")
    default = rendered["default"]["full"].read_text(encoding="utf-8")
    loads = re.compile(r"""\b(?:src|href)\s*=\s*["']?(?:https?:)?//""")
    assert loads.search(default) and "cdn" in default  # what the offline page must not do
    assert not loads.search(offline) and "cdn" not in offline.lower()


@pytest.mark.integration
@needs_chromium
def test_offline_page_draws_every_chart_with_no_network(browsed):
    drawn = len(MARKS.findall(browsed["offline"]["dom"]))
    assert drawn == len(vega_plots()), f"Vega drew {drawn} of the {len(vega_plots())} charts in dvc.yaml"
    ink, coloured, bins = pixel_stats(browsed["offline"]["screenshot"])
    assert ink > 0.01 and coloured > 0.001 and bins >= 8, f"the charts look blank: {ink=:.4f} {coloured=:.4f} {bins=}"


@pytest.mark.integration
@needs_chromium
def test_default_template_draws_nothing_with_no_network(browsed):
    """What the template fixes, and proof that the checks above can fail."""
    assert not MARKS.search(browsed["default"]["dom"])
    ink, _, _ = pixel_stats(browsed["default"]["screenshot"])
    assert ink < 0.001, f"a page with no Vega should be blank, yet {ink:.2%} of it is not white"
