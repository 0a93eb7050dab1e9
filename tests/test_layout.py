"""The architecture the folders promise: utils/darktable knows no torch and no proxy types,
library code runs no top-level script and reads no Constants, and no project import hides
inside a function."""
import ast
import subprocess
import sys

from tests.conftest import ROOT

LIBRARY = sorted((ROOT / "utils").rglob("*.py")) + sorted((ROOT / "models").rglob("*.py"))
SCRIPTS = ("Darktable_proxies.py", "Eval.py", "Sweep.py", "Pipeline_regression.py")


def test_the_darktable_wrapper_imports_no_torch_and_no_proxy_types():
    code = ("import sys, utils.darktable.runner, utils.darktable.cfa, utils.darktable.install, "
            "utils.darktable.params, utils.darktable.xmp, utils.darktable.dumps; "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith(('utils.proxies', 'models'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_library_code_runs_no_script_and_reads_no_constants():
    for path in LIBRARY:
        text = path.read_text()
        for script in SCRIPTS:
            assert script not in text.replace(f"``{script}", "").replace(f"`{script}", "") or \
                "subprocess" not in text, f"{path} may run {script}"
        if path.name != "settings.py":
            assert "import Constants" not in text, f"{path} reads Constants; pass settings as arguments"


def test_no_project_import_inside_a_function():
    for path in LIBRARY + [ROOT / s for s in SCRIPTS]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for inner in ast.walk(node):
                    if isinstance(inner, ast.ImportFrom) and (inner.module or "").split(".")[0] in ("utils", "models"):
                        raise AssertionError(f"{path}:{inner.lineno} imports {inner.module} inside {node.name}")


def test_no_package_folder_holds_more_than_twelve_modules():
    for folder in [ROOT / "utils", ROOT / "models", *[p for p in (ROOT / "utils").iterdir() if p.is_dir()]]:
        modules = [p for p in folder.glob("*.py") if p.name not in ("__init__.py", "__main__.py")]
        assert len(modules) <= 12, f"{folder} holds {len(modules)} modules"
