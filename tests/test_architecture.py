"""The house rules that keep slm_jax one-way: imports point from lower rooms to higher ones
(speech -> data -> models/kernels -> training -> evaluation/interop; cli and the demo on
top), the library never imports the demo, the batch contract is written once, and only the
CLI parses arguments or prints.

Imports are read with `ast` at every nesting level (module-level AND function-level), so a
lazy import inside a function cannot hide an upward arrow.
"""
from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("slm_jax", "slm_jax_demo", "slm_jax_experiments")

# Room -> rank. A module may import its own room or a room of LOWER rank; rooms of equal
# rank may not import each other (evaluation and interop are siblings).
RANKS = {
    "slm_jax.contract": 0,
    "slm_jax.gin_utils": 0,
    "slm_jax.text_normalization": 0,
    "slm_jax.speech": 1,
    "slm_jax.data": 2,
    "slm_jax.kernels": 3,
    "slm_jax.models": 4,
    "slm_jax.training": 5,
    "slm_jax.evaluation": 6,
    "slm_jax.interop": 6,
    "slm_jax.testing": 7,
    "slm_jax.cli": 8,
    "slm_jax_demo": 9,
    "slm_jax_experiments": 10,  # paper comparisons: consumers of the library and of the demo corpus
}
# Rooms inside data/, in the same one-way order.
DATA_RANKS = {
    "slm_jax.data.corpus": 0,
    "slm_jax.data.tokenizers": 1,
    "slm_jax.data.preprocessors": 2,
    "slm_jax.data.packing": 3,
    "slm_jax.data.feature_converter": 4,
    "slm_jax.data.registration": 5,
    "slm_jax.data.task_cache": 6,
    "slm_jax.data.pipeline": 7,
    "slm_jax.data.inspect_data": 7,
    "slm_jax.data.beam_cache": 8,
}
# The one allowed upward arrow: `slm-jax prepare demo-corpus`, a documented command, forwards
# to the demo's builder (imported inside the function, only when that command runs).
ALLOWED = {("slm_jax.cli.prepare", "slm_jax_demo.corpus")}


def module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(source: str, module: str, is_package: bool) -> list[tuple[str, int]]:
    """(imported module, line) for every import statement, at any nesting depth."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")
                parts = parts if is_package else parts[:-1]
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            # `from pkg import name` may import the submodule pkg.name: count both
            out += [(f"{base}.{a.name}", node.lineno) for a in node.names] or [(base, node.lineno)]
    return out


def _room(name: str, ranks: dict[str, int]) -> str | None:
    best = None
    for room in ranks:
        if name == room or name.startswith(room + "."):
            if best is None or len(room) > len(best):
                best = room
    return best


def violations_in(source: str, module: str, is_package: bool = False) -> list[str]:
    found = []
    for target, line in imports_of(source, module, is_package):
        for ranks in (RANKS, DATA_RANKS):
            a, b = _room(module, ranks), _room(target, ranks)
            if a is None or b is None or a == b:
                continue
            if any(module == m and (target == t or target.startswith(t + ".")) for m, t in ALLOWED):
                continue
            if ranks[b] >= ranks[a]:
                found.append(f"{module}:{line} imports {target} ({b}, rank {ranks[b]} >= {a}, rank {ranks[a]})")
    return found


def all_modules():
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            yield path, module_name(path)


def test_imports_point_one_way():
    found = []
    for path, module in all_modules():
        found += violations_in(path.read_text(), module, path.name == "__init__.py")
    assert not found, "upward imports:\n" + "\n".join(found)


def test_every_library_module_is_in_a_room():
    unplaced = [m for _, m in all_modules() if m != "slm_jax" and _room(m, RANKS) is None]
    assert not unplaced, f"modules outside every room (add them to RANKS): {unplaced}"


@pytest.mark.parametrize("module,source,expected", [
    ("slm_jax.training.train", "def f():\n    from slm_jax.evaluation import benchmarks\n", 1),
    ("slm_jax.data.pipeline", "import slm_jax.models.decoder\n", 1),
    ("slm_jax.evaluation.cloze", "from slm_jax_demo.corpus import ensure_spoken_demo_corpus\n", 1),
    ("slm_jax.data.tokenizers.spm", "from slm_jax.data.preprocessors import common\n", 1),
    ("slm_jax.evaluation.cloze", "from slm_jax.interop import hf_layout\n", 1),
    ("slm_jax.data.preprocessors.common", "from . import interleave\nfrom ..corpus import io\n", 0),
    ("slm_jax.training.trainer", "from slm_jax.models import decoder\nfrom slm_jax import contract\n", 0),
    ("slm_jax.cli.prepare", "from slm_jax_demo.corpus import demo_corpus_main\n", 0),
    ("slm_jax.cli.eval", "from slm_jax_demo.corpus import demo_corpus_main\n", 1),
])
def test_the_checker_catches_upward_imports(module, source, expected):
    assert len(violations_in(source, module)) == expected


def test_contract_imports_nothing_heavy():
    code = ("import sys, slm_jax.contract as c; heavy = {'tensorflow', 'jax', 'flax', 'numpy', 'seqio'} & set(sys.modules);"
            "assert not heavy, heavy; assert c.MODALITY_SPEECH == 2")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def _assignments(tree, names):
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Name) and t.id in names and isinstance(node.value, ast.Constant):
                    yield t.id, node.lineno


def test_the_batch_contract_is_written_once():
    """Modality ids and model feature names are literals only in slm_jax/contract.py."""
    ids = {"MODALITY_PAD", "MODALITY_TEXT", "MODALITY_SPEECH", "MODALITY_MARKER"}
    feature_literals = {"decoder_ctc_targets", "decoder_ctc_segment_ids", "decoder_ctc_positions",
                        "decoder_modality", "decoder_patch_ids"}
    found = []
    for path, module in all_modules():
        if module == "slm_jax.contract":
            continue
        tree = ast.parse(path.read_text())
        found += [f"{module}:{line} assigns {name}" for name, line in _assignments(tree, ids)]
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in feature_literals:
                found.append(f"{module}:{node.lineno} spells {node.value!r}")
    assert not found, "copies of the batch contract (use slm_jax.contract):\n" + "\n".join(found)


def test_only_the_cli_parses_arguments_and_prints():
    found = []
    for path, module in all_modules():
        if module.startswith(("slm_jax.cli", "slm_jax_demo")):
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if "argparse" in names:
                    found.append(f"{module}:{node.lineno} imports argparse")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                found.append(f"{module}:{node.lineno} prints")
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "exit"
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "sys"):
                found.append(f"{module}:{node.lineno} calls sys.exit")
    assert not found, "argument parsing / printing / exit codes outside slm_jax/cli:\n" + "\n".join(found)
