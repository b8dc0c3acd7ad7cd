"""MkDocs hook: the site's home page is README.md (one home for that text), its links rewritten
from the repository's point of view (docs/x.md) to the site's (x.md)."""

from pathlib import Path

from mkdocs.structure.files import File


def on_files(files, config):
    readme = Path(config.config_file_path).parent / "README.md"
    text = readme.read_text().replace("](docs/", "](")
    files.append(File.generated(config, "index.md", content=text))
    return files
