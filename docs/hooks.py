"""mkdocs hooks: serve the result figures of benchmarks/results/ under results/, and fill
`<!-- readme: SECTION -->` with that section of the README (the capability table, results, Map and
Architecture live there once)."""
import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]


def on_files(files, config):
    results = ROOT / "benchmarks"
    for png in sorted((results / "results").rglob("*.png")):
        files.append(File(str(png.relative_to(results)), str(results), config["site_dir"], config["use_directory_urls"]))
    return files


def readme_section(title: str) -> str:
    text, out, keep, fence = (ROOT / "README.md").read_text(), [], False, False
    for line in text.splitlines():
        fence ^= line.startswith("```")
        if not fence and line.startswith("## "):
            keep = line[3:].strip() == title
            continue
        if keep:
            out.append(line)
    if not out:
        raise ValueError(f"README.md has no section {title!r}")
    return "\n".join(out).strip().replace("](docs/", "](")  # the README's links into docs/, seen from docs/


def on_page_markdown(markdown, page, config, files):
    return re.sub(r"<!-- readme: (.+?) -->", lambda m: readme_section(m.group(1)), markdown)
