"""Package layering: no geometry import cycle, training and models free of simulation/evaluation."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import showerformer

PACKAGE = Path(showerformer.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, int]]:
    """Every module that ``path`` imports, at the top or inside functions, with its line.

    ``from a import b`` yields ``a`` and ``a.b`` (``b`` may be a submodule); relative imports
    are resolved against the file's package.
    """
    package = _module_name(path)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    found: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            found.append((module, node.lineno))
            found += [(f"{module}.{alias.name}", node.lineno) for alias in node.names]
    return found


def _offending(files: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for path in files:
        for module, line in _imports(path):
            if any(module == f or module.startswith(f + ".") for f in forbidden):
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {module}")
    return sorted(set(bad))


def _fresh_python(code: str) -> str:
    """Run ``code`` in a fresh interpreter that imports this checkout's showerformer."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(PACKAGE.parent), *filter(None, [env.get("PYTHONPATH")])])
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    return res.stdout


# ---------------------------------------------------------------------------- geometry <-> ild
def test_geometry_base_and_ild_never_import_geometry():
    """The import graph is geometry_base <- ild <- geometry: no module imports back."""
    base = PACKAGE / "geometry_base.py"
    ild = PACKAGE / "ild.py"
    assert not _offending([base], ("showerformer.geometry", "showerformer.ild"))
    assert not _offending([ild], ("showerformer.geometry",))
    assert any(m == "showerformer.geometry_base" for m, _ in _imports(ild))


def test_importing_ild_alone_loads_no_preset_module():
    out = _fresh_python(
        "import sys\n"
        "from showerformer.ild import ILDGeometry\n"
        "print(sorted(m for m in sys.modules if m.startswith('showerformer.geometry')))\n"
        "print(ILDGeometry.from_dict(ILDGeometry().to_dict()).n_cells)\n")
    loaded, n_cells = out.split("\n")[:2]
    assert loaded == "['showerformer.geometry_base']"
    assert int(n_cells) == 30 * 99 * 79


def test_geometry_knows_the_ild_preset_in_a_fresh_interpreter():
    """Importing showerformer.geometry is enough for PRESETS, get_geometry and from_dict."""
    out = _fresh_python(
        "from showerformer.geometry import PRESETS, Geometry, get_geometry\n"
        "geo = get_geometry('ild-ecal')\n"
        "print('ild-ecal' in PRESETS, type(geo).__module__, type(geo).__name__)\n"
        "print(Geometry.from_dict(geo.to_dict()) == geo)\n")
    assert out.split("\n")[:2] == ["True showerformer.ild ILDGeometry", "True"]


def test_geometry_reexports_the_base_class():
    from showerformer import geometry, geometry_base, ild

    assert geometry.Geometry is geometry_base.Geometry
    assert issubclass(ild.ILDGeometry, geometry.Geometry)


# ---------------------------------------------------------------------------- training, models
@pytest.mark.parametrize("folder", ["training", "models"])
def test_training_and_models_import_neither_simulation_nor_evaluation(folder):
    files = sorted((PACKAGE / folder).rglob("*.py"))
    assert files
    bad = _offending(files, ("showerformer.simulation", "showerformer.evaluation"))
    assert not bad, "layering violated:\n" + "\n".join(bad)


def test_import_scan_sees_lazy_and_relative_imports(tmp_path, monkeypatch):
    """The scan above would notice an import inside a function or a relative one."""
    pkg = tmp_path / "showerformer" / "training"
    pkg.mkdir(parents=True)
    (pkg / "x.py").write_text("def f():\n    from ..simulation import beams\n"
                              "    import showerformer.evaluation.features\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path / "showerformer")
    bad = _offending([pkg / "x.py"], ("showerformer.simulation", "showerformer.evaluation"))
    assert bad == ["showerformer/training/x.py:2 imports showerformer.simulation",
                   "showerformer/training/x.py:2 imports showerformer.simulation.beams",
                   "showerformer/training/x.py:3 imports showerformer.evaluation.features"]


# ---------------------------------------------------------------------------- incident particles
def test_incident_names_are_reexported_by_the_simulation():
    from showerformer import incident
    from showerformer.simulation import beams

    for name in incident.__all__:
        assert getattr(beams, name) is getattr(incident, name), name


def test_incident_loads_neither_simulation_nor_evaluation():
    out = _fresh_python(
        "import sys\n"
        "from showerformer.incident import Spectrum, get_particle, parse_theta\n"
        "print(Spectrum.parse('1:1000').kind, get_particle('photon').pdg,"
        " parse_theta('90', (0.0, 0.0))[0] > 1.5)\n"
        "print(sorted({m.split('.')[1] for m in sys.modules if m.startswith('showerformer.')}"
        " & {'simulation', 'evaluation', 'training'}))\n")
    assert out.split("\n")[:2] == ["log-uniform 22 True", "[]"]
