"""Scenic's own JAX MTV beside ours in a benchmark, without committing or installing any Scenic code.

`copy_sources(checkout, dest)` copies, from a local Scenic checkout the user names, the Python files that
`scenic/projects/mtv/model.py` imports (followed statically through `scenic.*` imports) into `dest`, an
ignored folder that travels to the benchmark machine. There, `import_mtv(dest)` imports Scenic's `MTV` Flax
module. Scenic's package also imports its training and data code (CLU, TensorFlow, TFDS, the removed
`flax.optim`, JAX APIs removed since), which the forward pass never runs; a module (or a module attribute read
at import time) that is missing on the machine is replaced by an inert stand-in, and each one is listed in the
benchmark's output. A stand-in the forward pass does use fails when Scenic's model is traced, and the
benchmark reports that instead of Scenic's numbers.
"""

from __future__ import annotations

import ast
import importlib
import importlib.abc
import importlib.machinery
import shutil
import sys
import types
from pathlib import Path

ENTRY = "scenic/projects/mtv/model.py"
# Packages whose absence is a real failure (the model's own maths), never stood in for as a whole.
REAL = ("scenic", "jax", "jaxlib", "flax", "numpy", "ml_collections")


def _module_file(root: Path, name: str) -> Path | None:
    """The file of module `name` (dotted) under `root`: a .py file or a package's __init__.py."""
    path = root.joinpath(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _scenic_imports(path: Path, root: Path) -> set[str]:
    """Dotted names of the `scenic.*` modules that the file at `path` imports (including `from x import mod`)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.split(".")[0] == "scenic")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "scenic":
            names.add(node.module)
            # `from scenic.x import y`: y is a module when a file for it exists.
            names.update(f"{node.module}.{a.name}" for a in node.names
                         if _module_file(root, f"{node.module}.{a.name}") is not None)
    return names


def copy_sources(checkout: str | Path, dest: str | Path) -> list[str]:
    """Copies the import closure of Scenic's MTV model (and every package __init__ on the way, and the licence)
    from the Scenic checkout `checkout` (the folder holding `scenic/`) to `dest`; returns the copied paths."""
    root = Path(checkout).expanduser().resolve()
    if not (root / ENTRY).is_file():
        raise SystemExit(f"{root} is not a Scenic checkout: {ENTRY} is missing (pass the folder that holds scenic/)")
    todo, seen = ["scenic.projects.mtv.model"], set()
    while todo:
        name = todo.pop()
        path = _module_file(root, name)
        if name in seen or path is None:
            continue
        seen.add(name)
        todo.extend(_scenic_imports(path, root))
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # the packages above it
    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    copied = []
    for name in sorted(seen):
        src = _module_file(root, name)
        rel = src.relative_to(root)
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / rel)
        copied.append(str(rel))
    if (root / "LICENSE").is_file():
        shutil.copy2(root / "LICENSE", dest / "LICENSE")
    return copied


class _StandIn:
    """Anything a module-level statement may do with a missing module's attribute: read, call, index, subclass."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str) -> _StandIn:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _StandIn(f"{self._name}.{attr}")

    def __call__(self, *args, **kwargs):
        # Used as a decorator: keep the decorated function or class.
        if len(args) == 1 and not kwargs and callable(args[0]) and not isinstance(args[0], _StandIn):
            return args[0]
        return _StandIn(f"{self._name}()")

    def __getitem__(self, item) -> _StandIn:
        return self

    def __mro_entries__(self, bases):
        return ()  # `class C(stand_in, RealBase)` becomes `class C(RealBase)`

    def __repr__(self) -> str:
        return f"<stand-in for {self._name}>"


class _StandInModule(types.ModuleType):
    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _StandIn(f"{self.__name__}.{attr}")


class _StandInFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves a stand-in module for every name in (or under) `names`."""

    def __init__(self):
        self.names: set[str] = set()

    def covers(self, fullname: str) -> bool:
        return any(fullname == n or fullname.startswith(n + ".") for n in self.names)

    def find_spec(self, fullname, path=None, target=None):
        if self.covers(fullname):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StandInModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


def _missing_name(err: Exception) -> str | None:
    """What to stand in for: a missing module, `pkg.attr` for `from pkg import attr` that pkg lacks, or
    `module.attr` for an attribute read at import time that the module lacks."""
    if isinstance(err, ModuleNotFoundError) and err.name:
        return err.name
    text = str(err)
    quoted = text.split("'")[1::2]  # the names inside '...' in the message
    if isinstance(err, ImportError) and text.startswith("cannot import name ") and len(quoted) >= 2:
        return f"{quoted[1]}.{quoted[0]}"  # cannot import name 'attr' from 'pkg'
    if isinstance(err, AttributeError) and text.startswith("module ") and len(quoted) >= 2:
        return f"{quoted[0]}.{quoted[1]}"  # module 'pkg' has no attribute 'attr'
    return None


def _stand_in_for(name: str, finder: _StandInFinder, err: Exception) -> None:
    """Installs the stand-in for `name` (a module, or an attribute of a loaded module); raises `err` if it must not."""
    if "." not in name and name in REAL or name.split(".")[0] == "scenic" or name in finder.names:
        raise err
    finder.names.add(name)
    parent, _, attr = name.rpartition(".")
    if isinstance(err, AttributeError) and parent in sys.modules:
        setattr(sys.modules[parent], attr, _StandIn(name))


def import_mtv(src: str | Path, tries: int = 40):
    """(Scenic's `scenic.projects.mtv.model` module, its model_utils, the names stood in for) from the copied
    sources in `src`; the stand-ins stay installed only for missing names (they shadow nothing that exists)."""
    src = str(Path(src).resolve())
    if src not in sys.path:
        sys.path.insert(0, src)
    finder = _StandInFinder()
    sys.meta_path.append(finder)  # last: only names no real finder can import
    for _ in range(tries):
        try:
            model = importlib.import_module("scenic.projects.mtv.model")
            utils = importlib.import_module("scenic.projects.mtv.model_utils")
            return model, utils, sorted(finder.names)
        except (ImportError, AttributeError) as err:
            name = _missing_name(err)
            if name is None:
                raise
            _stand_in_for(name, finder, err)
            for loaded in [m for m in sys.modules if m == "scenic" or m.startswith("scenic.")]:
                del sys.modules[loaded]  # re-import the half-imported modules with the new stand-in
    raise ImportError(f"importing Scenic's MTV still failed after standing in for {sorted(finder.names)}")


def build_mtv(scenic_model, model_utils, config, num_classes: int, dtype):
    """Scenic's `MTV` Flax module for the experiment `config` (a ConfigDict with Scenic's field names)."""
    m = config.model
    return scenic_model.MTV(
        view_configs=m.view_configs, cross_view_fusion=m.cross_view_fusion,
        temporal_encoding_config=m.temporal_encoding_config, global_encoder_config=m.global_encoder_config,
        input_token_temporal_dims=model_utils.get_input_token_temporal_dims(
            config.dataset_configs.num_frames, m.view_configs),
        num_classes=num_classes, classifier=m.classifier, dropout_rate=m.get("dropout_rate", 0.0),
        attention_dropout_rate=m.get("attention_dropout_rate", 0.1), stochastic_depth=m.get("stochastic_depth", 0.0),
        keep_spatiotemporal_features=m.get("keep_spatiotemporal_features", False),
        final_endpoint=m.get("final_endpoint", "logits"), dtype=dtype)
