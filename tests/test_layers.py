"""The running node stands on its own package: it never imports the training code, loads its model's trainer from
``dicomnode/segment/nnunet_trainers``, and its packages import in layers, each only from those below it, without
cycles."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "dicomnode"
#: Modules at the top of the package that every layer may import: the settings and their allowed values, the renal
#: domain (sides, structures, a kidney's figures, a study's measured result) and the received instance. At most MAX_FLAT
#: modules sit there.
FOUNDATION = {"__init__", "config", "options", "renal", "renal_limits", "measured", "instance"}
MAX_FLAT = 8
#: The packages in the order a study travels through them, each importing only from the foundation and the packages
#: before it: utilities, the DICOM network, the store, intake (receiving and completing a study), image reading,
#: selection of the series, segmentation, measurement and QC, the result objects, outbound (saving, superseding,
#: delivery, Storage Commitment), and the node that runs it all (job runner, pipeline, service, CLI, status page).
LAYERS = ["base", "net", "store", "intake", "imaging", "selection", "segment", "analysis", "results", "outbound", "node"]
#: Modules that start the node, above every package.
ORCHESTRATION = {"__main__"}


def _module(path: Path) -> str:
    """``imaging.load`` for dicomnode/imaging/load.py, ``segment`` for dicomnode/segment/__init__.py."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


def _statements(path: Path) -> list[tuple[str, list[str]]]:
    """Each import of a file as (module, names): ``from m import a, b`` gives (m, [a, b]), ``import m`` (m, [])."""
    found: list[tuple[str, list[str]]] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
    return found


def _imports() -> dict[str, set[str]]:
    """Each module of the node and the node's modules it imports (``from dicomnode import x``: the package's own
    ``__init__``, or module ``x`` where it is one)."""
    modules = {_module(p) for p in PACKAGE.rglob("*.py")}
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        names: set[str] = set()
        for module, imported in _statements(path):
            if module.split(".")[0] != "dicomnode":
                continue
            base = module.removeprefix("dicomnode").removeprefix(".")
            for name in imported:
                joined = f"{base}.{name}".lstrip(".")
                names.add(joined if joined in modules else base or "__init__")
            if not imported:
                names.add(base or "__init__")
        graph[_module(path)] = names
    return graph


def _rank(module: str) -> int:
    """0 for the foundation, 1.. for the packages in LAYERS order, above them the orchestration."""
    if module in FOUNDATION:
        return 0
    if module.split(".")[0] in LAYERS:
        return 1 + LAYERS.index(module.split(".")[0])
    assert module in ORCHESTRATION, f"dicomnode/{module}: not placed in a layer of tests/test_layers.py"
    return 1 + len(LAYERS)


def test_the_node_never_imports_the_training_code() -> None:
    offenders = {}
    for path in PACKAGE.rglob("*.py"):
        found = {module for module, _ in _statements(path) if module.split(".")[0] == "training"}
        if found:
            offenders[_module(path)] = sorted(found)
    assert offenders == {}


def test_packages_import_only_from_the_layers_below_them() -> None:
    graph = _imports()
    upward = {m: sorted(n for n in names if _rank(n) > _rank(m)) for m, names in graph.items()}
    assert {m: n for m, n in upward.items() if n} == {}
    # the stages in order know nothing of how a study arrived, how results leave, or what runs them
    assert {m for m in graph["node.pipeline"] if m.split(".")[0] in ("intake", "outbound", "node")} == set()


def test_the_tree_names_the_journey_with_few_modules_at_its_top() -> None:
    flat = {p.stem for p in PACKAGE.glob("*.py")}
    assert len(flat) <= MAX_FLAT and flat <= FOUNDATION | ORCHESTRATION, sorted(flat)
    assert {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()} == set(LAYERS)


def test_modules_import_without_cycles() -> None:
    graph = _imports()

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        return any(n == target or (n not in seen and reaches(n, target, seen | {n})) for n in graph.get(start, ()))

    assert [m for m in graph if reaches(m, m, set())] == []


def test_the_shipped_model_loads_with_the_training_package_unavailable() -> None:
    code = (
        "import sys; sys.modules['training'] = None\n"  # any import of training now raises ImportError
        "from pathlib import Path\n"
        "from dicomnode.segment.segmenter import Model, Segmenter\n"
        "segmenter = Segmenter(Model.from_folder(Path('models/renal-phantom-cpu')), 'cpu')\n"
        "print(type(segmenter.predictor.network).__name__, segmenter.predictor.trainer_name)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-1] == "nnUNetTrainerPaper"


def test_help_of_both_commands_comes_without_importing_torch() -> None:
    """``--help`` answers at once: torch (seconds to import) is imported only by a command that runs a model."""
    code = (
        "import contextlib, io, sys\n"
        "from dicomnode.node.cli import main as node\n"
        "from training.cli import main as train\n"
        "for main in (node, train):\n"
        "    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "        main(['--help'])\n"
        "print('torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-1] == "False"
    module = subprocess.run([sys.executable, "-m", "dicomnode", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert module.returncode == 0 and "usage: dicomnode" in module.stdout, module.stderr[-2000:]
