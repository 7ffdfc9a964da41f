"""Files shipped with tagwatch, found as package data (importlib.resources).

The example configuration, cases and scenarios (the `tagwatch.examples`
package, which is the checkout's config/ folder) and the dashboard's static
files. The same calls work in a checkout, an editable install and a wheel.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def example(*parts: str) -> Path:
    """A shipped example file or folder: example("cases"), example("tagwatch.example.toml")."""
    return _on_disk(files("tagwatch.examples").joinpath(*parts))


def static() -> Path:
    """The dashboard's static folder (index.html, scripts, styles)."""
    return _on_disk(files("tagwatch.feed").joinpath("static"))


def _on_disk(resource) -> Path:
    # The daemon and the simulator read folders of files by path; tagwatch is
    # installed as files (a wheel, an editable install), never run from a zip.
    if not isinstance(resource, Path):
        raise RuntimeError(f"tagwatch package data is not on disk: {resource}")
    return resource
