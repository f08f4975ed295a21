"""The running node stands on its own package: it never imports the training code, loads its model's trainer from
``dicomnode/nnunet_trainers``, and its modules import in layers without cycles."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "dicomnode"
#: Modules that run the node; the stages of the pipeline must not import them (data flows forward, not back).
ORCHESTRATION = {"cli", "service", "pipeline", "receive", "complete", "send", "supersede", "commitment", "retention", "web"}


def _imports() -> dict[str, set[str]]:
    graph = {}
    for path in PACKAGE.glob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
        graph[path.stem] = names
    return graph


def test_the_node_never_imports_the_training_code() -> None:
    offenders = {module: sorted(n for n in names if n.split(".")[0] == "training") for module, names in _imports().items()}
    assert {m: n for m, n in offenders.items() if n} == {}


def test_modules_import_in_layers_without_cycles() -> None:
    graph = {m: {n.split(".")[1] for n in names if n.startswith("dicomnode.") and n.count(".") == 1} for m, names in _imports().items()}
    stages = set(graph) - ORCHESTRATION - {"__init__"}
    assert {s: sorted(graph[s] & ORCHESTRATION) for s in stages if graph[s] & ORCHESTRATION} == {}
    assert graph["pipeline"] & {"receive", "send", "complete", "retention", "service", "cli"} == set()

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        return any(n == target or (n not in seen and reaches(n, target, seen | {n})) for n in graph.get(start, ()))

    assert [m for m in graph if reaches(m, m, set())] == []


def test_the_shipped_model_loads_with_the_training_package_unavailable() -> None:
    code = (
        "import sys; sys.modules['training'] = None\n"  # any import of training now raises ImportError
        "from pathlib import Path\n"
        "from dicomnode.segment import Model, Segmenter\n"
        "segmenter = Segmenter(Model.from_folder(Path('models/renal-phantom-cpu')), 'cpu')\n"
        "print(type(segmenter.predictor.network).__name__, segmenter.predictor.trainer_name)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-1] == "nnUNetTrainerPaper"
