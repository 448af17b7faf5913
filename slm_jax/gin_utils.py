"""t5x-style gin handling: `--gin_file`, `--gin.NAME=VALUE`, `--module_import`.

Gin files are found relative to the working directory or to the repository's `gin/`
folder, so `--gin_file=gin/runs/demo_cpu.gin` and `--gin_file=runs/demo_cpu.gin` both
work and run files can `include 'models/tiny.gin'`.
"""
from __future__ import annotations

import importlib
import os
import pathlib
import sys
from typing import Sequence

import gin

GIN_DIR = pathlib.Path(__file__).resolve().parent.parent / "gin"

# Modules whose configurables gin must know before parsing (unknown names are errors).
CONFIGURABLE_MODULES = (
    "slm_jax.models.decoder",
    "slm_jax.models.lst",
    "slm_jax.training.optimizer",
    "slm_jax.training.partitioning",
    "slm_jax.training.trainer",
    "slm_jax.training.train",
    "slm_jax.data.pipeline",
)


class ConfigError(ValueError):
    """A gin file, binding or module import that cannot be used; names the culprit."""


def import_modules(names: Sequence[str]) -> None:
    # Like t5x: a user's task module in the working directory is importable by name.
    if names and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise ConfigError(f"--module_import={name}: cannot import it ({err}); it must be importable "
                              f"from the current directory or the installed packages") from err


def _resolve_gin_file(path: str) -> str:
    for candidate in (pathlib.Path(path), GIN_DIR / path, GIN_DIR.parent / path):
        if candidate.is_file():
            return str(candidate)
    raise ConfigError(f"--gin_file={path}: no such file (looked in the working directory and in {GIN_DIR})")


def _harden_gin_file_readers() -> None:
    """Make gin's file-existence checks return False instead of raising.

    gin's package-resource reader treats `runs/base.gin` as module `runs` + file and
    crashes (TypeError) when the working directory holds a plain `runs/` folder, which
    Python imports as a namespace package without `__file__`.
    """
    readers = gin.config._FILE_READERS  # noqa: SLF001 - no public hook for this
    for i, (reader, exists) in enumerate(readers):
        if getattr(exists, "hardened", False):
            continue

        def safe_exists(path, _exists=exists):
            try:
                return _exists(path)
            except Exception:  # noqa: BLE001 - "cannot tell" means "not here"
                return False

        safe_exists.hardened = True
        readers[i] = (reader, safe_exists)


def parse_gin(gin_files: Sequence[str], bindings: Sequence[str], module_imports: Sequence[str] = ()) -> None:
    """Import configurables, then parse files and bindings, naming whatever fails."""
    gin.clear_config()
    import_modules(CONFIGURABLE_MODULES)
    import_modules(module_imports)
    _harden_gin_file_readers()
    gin.add_config_file_search_path(str(GIN_DIR))
    gin.add_config_file_search_path(str(GIN_DIR.parent))
    gin.add_config_file_search_path(os.getcwd())
    for path in gin_files:
        resolved = _resolve_gin_file(path)
        try:
            gin.parse_config_file(resolved)
        except Exception as err:  # gin raises ValueError/ParseError/... with its own context
            raise ConfigError(f"--gin_file={path}: {err}") from err
    # Bindings one at a time so an error names its binding; they come after the files,
    # so a macro such as --gin.TRAIN_STEPS=10 overrides the file's value.
    for binding in bindings:
        try:
            gin.parse_config(binding)
        except Exception as err:
            raise ConfigError(f"--gin.{binding}: unknown or invalid gin binding: {err}") from err
    check_required_macros()


def check_required_macros() -> None:
    """ConfigError naming every macro still bound to `%gin.REQUIRED` (e.g. base.gin's
    MIXTURE_OR_TASK_NAME and MODEL_DIR), before anything reads data or compiles."""
    missing = [name for (name, selector), params in gin.config._CONFIG.items()  # noqa: SLF001 - no public listing
               if selector == "gin.macro" and isinstance(params.get("value"), gin.config.ConfigurableReference)
               and str(params["value"]) == "%gin.REQUIRED"]
    if missing:
        example = " ".join(f"--gin.{m}=..." for m in sorted(missing))
        raise ConfigError(f"required gin macros not set: {', '.join(sorted(missing))}; set them in the run file "
                          f"(see gin/runs/base.gin) or pass {example}")



def split_gin_args(argv: Sequence[str]) -> tuple[list[str], list[str], list[str], list[str]]:
    """Pull t5x-style flags out of argv -> (gin_files, bindings, module_imports, rest)."""
    files, bindings, modules, rest = [], [], [], []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        key, eq, value = arg.partition("=")
        if key in ("--gin_file", "--module_import") and not eq:
            if i + 1 >= len(args):
                raise ConfigError(f"{key} needs a value")
            value, i = args[i + 1], i + 1
            eq = "="
        if key == "--gin_file":
            files.append(value)
        elif key == "--module_import":
            modules.append(value)
        elif key.startswith("--gin.") and eq:
            bindings.append(f"{key[len('--gin.'):]} = {value}")
        elif key.startswith("--gin."):
            raise ConfigError(f"{arg}: expected --gin.NAME=VALUE")
        else:
            rest.append(arg)
        i += 1
    return files, bindings, modules, rest


def setup(argv: Sequence[str], *, required: bool = True, what: str = "a run file") -> list[str]:
    """The one gin setup of every command: pulls --gin_file / --gin.NAME=VALUE /
    --module_import out of `argv`, parses them (gin cleared first) and returns the other args.

    `required`: a ConfigError when no --gin_file or binding is given (`what` says which file).
    Without any gin flag and `required=False`, gin is left untouched.
    """
    files, bindings, modules, rest = split_gin_args(argv)
    if required and not files and not bindings:
        raise ConfigError(f"no --gin_file given ({what}, e.g. --gin_file=gin/runs/demo_cpu.gin)")
    if files or bindings or modules:
        parse_gin(files, bindings, modules)
    return rest
