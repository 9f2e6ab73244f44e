"""Build the HTML template that `dvc plots show` fills: Vega, Vega-Lite and Vega-Embed inlined, so the page draws
its charts with no network.

dvc_render's own page loads these three libraries from a CDN through its `{scripts}` placeholder; offline that
page shows nothing. This template has no such placeholder, so the CDN tags are dropped, and carries the same
versions inline instead. Run it again after an upgrade of dvc-render:

    python plots/template/build.py            # writes the file that .dvc/config's plots.html_template names

It needs npm and the npm registry (nothing else from the internet); the tarballs only pass through a temporary
folder.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import logging
import re
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from dvc.repo import Repo
from dvc_render.html import HTML
from dvc_render.vega import VegaRenderer

from llama_pe.io import atomic_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    build: str  # the minified browser build inside the tarball
    integrity: str  # `npm view NAME@VERSION dist.integrity`: what the registry published, so a swap is caught


# The versions dvc_render's VegaRenderer.SCRIPTS asks the CDN for; check_versions() holds the two together.
# Order matters: Vega-Lite needs the `vega` global and Vega-Embed both.
PACKAGES = (
    Package(
        "vega",
        "5.20.2",
        "package/build/vega.min.js",
        "sha512-qmH7aD9GGPpssVdxL1xgcdxTbQzyRUeRR16Os385ymvQhiwCYQNA6+eXUPAZDTVLfk0RXu6Jzj6kUE5jQ80EVw==",
    ),
    Package(
        "vega-lite",
        "5.2.0",
        "package/build/vega-lite.min.js",
        "sha512-Yxcg8MvYfxHcG6BbkaKT0oVCIMIcE19UvqIsEwBmyd/7h2nzW7oRnID81T8UrY7hpDrIr6wa2JADOT2dhGNErw==",
    ),
    Package(
        "vega-embed",
        "6.18.2",
        "package/build/vega-embed.min.js",
        "sha512-wcDyQPE4J5aiCDc3/suH5RQDvrKkjuLkhzUcbOLwEkNF8/+pp17tS0JghzEvAPNRg+5aG1/N2ydixq8Lk3dOlg==",
    ),
)

# dvc_render fills a template with str.replace over the whole text, so these must not occur in inlined code.
PLACEHOLDERS = [f"{{{name}}}" for name in (HTML.SCRIPTS_PLACEHOLDER, HTML.PLOTS_PLACEHOLDER, HTML.REFRESH_PLACEHOLDER)]

# The page is dvc_render's PAGE_HTML with the CDN tags replaced by the libraries. The charset comes first (a browser
# looks for it in the first 1024 bytes): the builds hold non-ASCII characters, and a file:// page has no header
# that would name its encoding.
PAGE = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    {refresh_tag}
    <title>DVC Plot</title>
    <!-- {banner}: written by plots/template/build.py, which inlines them so that the page draws offline.
         Rebuild with that script; do not edit by hand. -->
{scripts}
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def check_versions(packages: tuple[Package, ...] = PACKAGES, scripts: str = VegaRenderer.SCRIPTS) -> None:
    """Fail unless the pinned versions are exactly those whose CDN tags dvc_render would write."""
    wanted = dict(re.findall(r"/npm/([\w-]+)@([\w.-]+)", scripts))
    pinned = {p.name: p.version for p in packages}
    if wanted != pinned:
        raise ValueError(
            f"dvc_render's Vega page loads {wanted} but plots/template/build.py pins {pinned}; set PACKAGES to "
            "dvc_render's versions, each with its `npm view NAME@VERSION dist.integrity`, and run it again"
        )


def fetch(package: Package, folder: Path) -> Path:
    """`npm pack` one package into folder; the tarball, once its sha512 matches the pinned integrity."""
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is not on PATH; plots/template/build.py fetches Vega with `npm pack` (apt install npm)")
    spec = f"{package.name}@{package.version}"
    result = subprocess.run(
        [npm, "pack", spec, "--json", "--pack-destination", str(folder)],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0:
        raise RuntimeError(f"npm pack {spec} failed (is the npm registry reachable?):\n{result.stderr.strip()}")
    tarball = folder / json.loads(result.stdout)[0]["filename"]
    digest = "sha512-" + base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()
    if digest != package.integrity:
        raise RuntimeError(f"{spec} from the registry has integrity {digest}, not the pinned {package.integrity}")
    return tarball


def read_build(tarball: Path, member: str) -> str:
    with tarfile.open(tarball) as tar:
        handle = tar.extractfile(member)
        if handle is None:
            raise RuntimeError(f"{tarball.name} holds no file {member}")
        return handle.read().decode("utf-8")


def script_tag(package: Package, code: str) -> str:
    """A <script> element that carries code inline and ends where the code ends."""
    spec = f"{package.name}@{package.version}"
    found = [p for p in PLACEHOLDERS if p in code]
    if found:
        # No escape would be safe here: in code (not a string) a brace cannot be written another way.
        raise RuntimeError(f"{spec} contains {found}, which dvc_render would replace inside the library's code")
    if "<!--" in code:
        # After "<!--", an HTML parser that then meets "<script" no longer ends the element at "</script>".
        raise RuntimeError(f"{spec} contains '<!--', which can keep an inline <script> open past its end")
    # "</script" would end the element early. Minified code holds it only in strings, regexes and comments, where
    # "<\/script" means the same.
    code = re.sub(r"</(script)", r"<\\/\1", code, flags=re.IGNORECASE)
    return f"    <script>/* {spec} {package.build.removeprefix('package/')} */\n{code}\n    </script>"


def build_page(packages: tuple[Package, ...], codes: list[str]) -> str:
    scripts = "\n".join(script_tag(p, c) for p, c in zip(packages, codes, strict=True))
    banner = " ".join(f"{p.name}@{p.version}" for p in packages)
    # Placeholders pass through as literal text; they are dvc_render's to fill.
    page = PAGE.format(banner=banner, scripts=scripts, refresh_tag="{refresh_tag}", plot_divs="{plot_divs}")
    assert "{scripts}" not in page and page.count("{plot_divs}") == 1 and page.count("{refresh_tag}") == 1
    return page


def configured_template(root: Path) -> Path:
    """The template path in the repo's DVC config, resolved the way `dvc plots show` resolves it."""
    repo = Repo(str(root))
    try:
        value = repo.config.get("plots", {}).get("html_template")
        dvc_dir = Path(repo.dvc_dir)
    finally:
        repo.close()
    if not value:
        raise ValueError(
            "the DVC config sets no plots.html_template; set one (relative to .dvc/), e.g. "
            "`dvc config plots.html_template ../plots/template/offline.html`, or pass --out"
        )
    return dvc_dir / value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="where to write the template (default: the DVC config's)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    check_versions()
    out = args.out or configured_template(Path(__file__).resolve().parents[2])
    with tempfile.TemporaryDirectory(prefix="vega-npm-") as folder:
        codes = [read_build(fetch(p, Path(folder)), p.build) for p in PACKAGES]
    with atomic_path(out) as tmp:
        tmp.write_text(build_page(PACKAGES, codes), encoding="utf-8")
    log.info("wrote %s (%d bytes)", out.resolve(), out.stat().st_size)


if __name__ == "__main__":
    main()
