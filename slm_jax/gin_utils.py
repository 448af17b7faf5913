"""t5x-style gin handling: `--gin_file`, `--gin.NAME=VALUE`, `--module_import`.

Gin files are found relative to the working directory or to the repository's `gin/`
folder, so `--gin_file=gin/runs/demo_cpu.gin` and `--gin_file=runs/demo_cpu.gin` both
work and run files can `include 'models/tiny.gin'`.
"""
from __future__ import annotations

import difflib
import importlib
import inspect
import os
import pathlib
import sys
from typing import Any, Iterable, Sequence

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
        except (ImportError, SyntaxError) as err:
            raise ConfigError(f"--module_import={name}: cannot import it ({err}); it must be importable "
                              f"from the current directory or the installed packages") from err


def _resolve_gin_file(path: str) -> str:
    tried = list(dict.fromkeys(p.resolve() for p in (pathlib.Path(path), GIN_DIR / path, GIN_DIR.parent / path)))
    for candidate in tried:
        if candidate.is_file():
            return str(candidate)
    known = sorted(str(f.relative_to(GIN_DIR.parent)) for f in GIN_DIR.rglob("*.gin"))
    raise ConfigError(f"--gin_file={path}: no such file (tried {', '.join(map(str, tried))})"
                      f"{_did_you_mean(path, known)}")


def _did_you_mean(name: str, known: Iterable[str]) -> str:
    """'; did you mean X?' with the closest of `known` (difflib), or '' when none is close."""
    close = difflib.get_close_matches(name, sorted(set(known)), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


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
    """Import configurables, then parse files and bindings, naming whatever fails.

    ConfigError for: a missing file (the paths tried, the closest gin file), an unknown
    configurable or parameter in a binding (the closest registered name), a macro binding
    (`--gin.NAME=VALUE` without a dot) that no loaded config references or defines (the
    closest known macro), a macro value of another type than the file's value, and a
    required macro left unset.
    """
    resolved_files = [(path, _resolve_gin_file(path)) for path in gin_files]  # before the slow imports
    gin.clear_config()
    import_modules(CONFIGURABLE_MODULES)
    import_modules(module_imports)
    _harden_gin_file_readers()
    gin.add_config_file_search_path(str(GIN_DIR))
    gin.add_config_file_search_path(str(GIN_DIR.parent))
    gin.add_config_file_search_path(os.getcwd())
    for path, resolved in resolved_files:
        try:
            gin.parse_config_file(resolved)
        except Exception as err:  # gin raises ValueError/ParseError/... with its own context
            raise ConfigError(f"--gin_file={path}: {_first_line(err)}") from err
    file_macros = _macro_values()
    # Bindings one at a time so an error names its binding; they come after the files,
    # so a macro such as --gin.TRAIN_STEPS=10 overrides the file's value.
    for binding in bindings:
        try:
            gin.parse_config(binding)
        except Exception as err:
            raise ConfigError(f"--gin.{binding}: unknown or invalid gin binding: {_first_line(err)}"
                              f"{_binding_suggestion(binding)}") from err
    check_macro_bindings(bindings, file_macros)
    check_required_macros()


def _first_line(err: BaseException) -> str:
    """gin's message without its multi-line context (the flag already names the binding)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# --- what a command-line binding may name --------------------------------------------------

def _binding_key(binding: str) -> str:
    """`NAME = VALUE` -> NAME (for a `scope/Configurable.param` binding, the whole key)."""
    return binding.partition("=")[0].strip()


def _macro_values() -> dict[str, Any]:
    """Every macro bound so far -> its value (gin keeps a macro as selector `gin.macro`)."""
    return {name: params.get("value") for (name, selector), params in gin.config._CONFIG.items()  # noqa: SLF001
            if selector == "gin.macro"}


def _macro_references() -> set[str]:
    """Names of the macros some bound value refers to (`%NAME`), at any depth."""
    found: set[str] = set()

    def walk(value):
        if isinstance(value, gin.config.ConfigurableReference):
            text = str(value)
            if text.startswith("%"):
                found.add(text[1:])
        elif isinstance(value, (list, tuple, set)):
            for v in value:
                walk(v)
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)

    for params in gin.config._CONFIG.values():  # noqa: SLF001 - no public listing
        walk(list(params.values()))
    return found


def _same_kind(old: Any, new: Any) -> bool:
    """Whether a command-line macro value fits the file's value: same type, an int where a
    float was, or anything where the file had None, %gin.REQUIRED or a reference."""
    if old is None or isinstance(old, gin.config.ConfigurableReference):
        return True
    if isinstance(old, bool) or isinstance(new, bool):
        return type(old) is type(new)
    if isinstance(old, float) and isinstance(new, int):
        return True
    if isinstance(old, (int, float, str)):
        return type(old) is type(new)
    return True


def check_macro_bindings(bindings: Sequence[str], file_macros: dict[str, Any]) -> None:
    """ConfigError for a macro binding (no dot in its name) that no loaded config references
    and no loaded file defines, naming the closest known macro; and for a macro value of
    another type than the file's (e.g. `--gin.TRAIN_STEPS=1e3`, a float, for an int)."""
    referenced = _macro_references()
    known = referenced | set(file_macros)
    now = _macro_values()
    for binding in bindings:
        name = _binding_key(binding)
        if "." in name:
            continue  # a configurable binding: gin itself checked the configurable and parameter
        if name not in known:
            raise ConfigError(f"--gin.{binding}: no loaded gin file or module uses a macro named {name}"
                              f"{_did_you_mean(name, known)} (known macros: {', '.join(sorted(known)) or 'none'})")
        old, new = file_macros.get(name), now.get(name)
        if not _same_kind(old, new):
            raise ConfigError(f"--gin.{binding}: {name} is {type(old).__name__} in the gin file ({old!r}), got "
                              f"{type(new).__name__} {new!r}" + (" (quote strings: --gin.NAME=\"'text'\")"
                                                                 if isinstance(old, str) else ""))


def _configurable_names() -> list[str]:
    """Short and full names of every registered configurable."""
    names = []
    for selector, _ in gin.config._REGISTRY.items():  # noqa: SLF001 - no public listing
        if selector.startswith("gin."):
            continue
        names.append(selector)
        names.append(selector.rpartition(".")[2])
    return names


def _parameter_names(configurable_name: str) -> list[str]:
    """Parameter names of a registered configurable ([] when it cannot be inspected)."""
    match = gin.config._REGISTRY.get_match(configurable_name)  # noqa: SLF001
    if match is None:
        return []
    try:
        return list(inspect.signature(match.wrapped).parameters)
    except (TypeError, ValueError):
        return []


def _binding_suggestion(binding: str) -> str:
    """'; did you mean ...?' for a binding whose configurable or parameter is unknown."""
    key = _binding_key(binding)
    scope, _, selector = key.rpartition("/")
    configurable, dot, param = selector.rpartition(".")
    if not dot:
        return ""
    try:
        registered = gin.config._REGISTRY.get_match(configurable)  # noqa: SLF001
    except Exception:  # noqa: BLE001 - an ambiguous partial name: gin's own message says so
        return ""
    prefix = f"{scope}/" if scope else ""
    if registered is None:
        close = difflib.get_close_matches(configurable, sorted(set(_configurable_names())), n=1, cutoff=0.6)
        return f"; did you mean {prefix}{close[0]}.{param}?" if close else ""
    close = difflib.get_close_matches(param, _parameter_names(configurable), n=1, cutoff=0.5)
    return f"; did you mean {prefix}{configurable}.{close[0]}?" if close else ""


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


def setup(argv: Sequence[str], *, required: bool = True, what: str = "a run file",
          other_args: bool = True) -> list[str]:
    """The one gin setup of every command: pulls --gin_file / --gin.NAME=VALUE /
    --module_import out of `argv`, parses them (gin cleared first) and returns the other args.

    `required`: a ConfigError when no --gin_file or binding is given (`what` says which file).
    Without any gin flag and `required=False`, gin is left untouched. `other_args=False`
    (a command with only gin flags, e.g. `train`): any other argument is a ConfigError
    naming it and the closest gin flag, before any gin file is read.
    """
    files, bindings, modules, rest = split_gin_args(argv)
    if not other_args and rest:
        flag = rest[0].partition("=")[0]
        raise ConfigError(f"{rest[0]}: unknown argument; this command takes only --gin_file=FILE, "
                          f"--gin.NAME=VALUE and --module_import=MODULE"
                          f"{_did_you_mean(flag, ('--gin_file', '--module_import'))}")
    if required and not files and not bindings:
        raise ConfigError(f"no --gin_file given ({what}, e.g. --gin_file=gin/runs/demo_cpu.gin)")
    if files or bindings or modules:
        parse_gin(files, bindings, modules)
    return rest
