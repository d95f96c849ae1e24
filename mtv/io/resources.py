"""Files shipped inside the package (configs, the zoo registry, class names, presets, the sample clip).

They are found through importlib.resources, so an installed wheel, used from any directory, finds
the same files as an editable checkout (where configs/ and zoo/ at the top of the repository are
mapped to the packages mtv.configs and mtv.zoo by setup.py's package_dir).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from mtv.errors import MTVError


def resource_path(package: str, *parts: str) -> Path:
    """A real filesystem path to `parts` inside `package` (e.g. 'mtv.zoo', 'models.json'); may not exist."""
    try:
        target = files(package)
    except ModuleNotFoundError as err:
        raise MTVError(f"package data '{package}' is not installed ({err}); reinstall mtv "
                       "(`pip install .` or `pip install -e .` from the repository root)") from None
    for part in parts:
        target = target / part
    if not isinstance(target, Path):
        # A zip import or another loader without real files: the readers here need paths.
        raise MTVError(f"package data '{package}/{'/'.join(parts)}' is not a file on disk ({target!r}); "
                       "install mtv as a regular (unzipped) package")
    return target
