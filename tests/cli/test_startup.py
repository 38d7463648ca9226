"""Start-up of the command line: what it imports, what it prints, and how it runs without the optional extras.

Every case runs the real command in a fresh Python process (``python -m conceptattention.cli.main``), because what
is imported, which warnings appear once per process and which packages are missing are all per-process facts.
A plain ``pip install`` (no extras) is simulated with a ``sitecustomize`` that makes the extras' packages
unimportable (``sys.modules[name] = None``: ``import h5py`` raises ``ModuleNotFoundError`` and
``importlib.util.find_spec`` answers None, as for a package that is not installed); ``scripts/check_bare_wheel.sh``
does the same with a real wheel in a fresh virtual environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import conceptattention
from conceptattention.cli import main as cli_main
from conceptattention.extras import EXTRAS, MissingExtraError, lazy_function, require, require_extra


SRC = Path(__file__).resolve().parents[2] / "src"
OPTIONAL = sorted({module for modules in EXTRAS.values() for module in modules})  # h5py, torchmetrics, gradio, ...
# Packages of the dev extra that need an optional one (peft imports accelerate); a bare install has neither, and
# diffusers imports peft whenever it is installed.
DEV_ONLY = ("peft",)
HEAVY = ("torch", "diffusers", "transformers", "gradio", "torchmetrics", "h5py")


def run(args: list[str], *, blocked: tuple[str, ...] = (), tmp_path: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m conceptattention.cli.main *args`` in a fresh process, with ``blocked`` packages missing."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    paths = [str(SRC)]
    if blocked:
        site = tmp_path / "blocker"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(
            "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in blocked)
        )
        paths.insert(0, str(site))
    env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "conceptattention.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=tmp_path,
    )


def imported_after(code: str, tmp_path: Path) -> list[str]:
    """The heavy libraries in ``sys.modules`` after running ``code`` in a fresh process."""
    probe = f"{code}\nimport sys\nprint('MODULES:' + ','.join(m for m in {HEAVY!r} if m in sys.modules))"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip().splitlines()[-1]
    assert line.startswith("MODULES:"), result.stdout
    return [name for name in line.removeprefix("MODULES:").split(",") if name]


# ----------------------------------------------------------------------------------------------------------------
# Lazy imports


def test_importing_the_command_line_imports_no_heavy_library(tmp_path):
    assert imported_after("import conceptattention.cli.main", tmp_path) == []
    assert imported_after("import conceptattention", tmp_path) == []


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["generate", "--help"], ["explain", "--help"]])
def test_help_imports_no_heavy_library(tmp_path, args):
    code = f"from conceptattention.cli.main import main\ntry:\n    main({args!r})\nexcept SystemExit:\n    pass"
    assert imported_after(code, tmp_path) == []


def test_python_dash_m_conceptattention_is_the_command(tmp_path):
    """``python -m conceptattention`` runs the same command line (package ``__main__``), quickly: no torch for --help."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    probe = (
        "import runpy, sys\nsys.argv = ['conceptattention', '--help']\n"
        "try:\n    runpy.run_module('conceptattention', run_name='__main__')\nexcept SystemExit as exit:\n"
        f"    print('STATUS:', exit.code, [m for m in {HEAVY!r} if m in sys.modules])\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: conceptattention "), result.stdout
    assert all(name in result.stdout for name in cli_main.SUBCOMMANDS)
    assert result.stdout.strip().splitlines()[-1] == "STATUS: 0 []"
    plain = subprocess.run(
        [sys.executable, "-m", "conceptattention", "--version"], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert (plain.returncode, plain.stdout.strip()) == (0, f"conceptattention {conceptattention.__version__}")


def test_help_lists_every_subcommand_with_its_modules_help():
    for name, help_text in cli_main.SUBCOMMANDS.items():
        module = __import__(cli_main.subcommand_module(name), fromlist=["HELP"])
        assert module.HELP == help_text, name
    parser = cli_main.build_parser()  # every subcommand registered fully
    assert set(parser._subparsers._group_actions[0].choices) == set(cli_main.SUBCOMMANDS)


def test_public_names_still_import_lazily():
    import conceptattention

    for name in conceptattention.__all__:
        assert getattr(conceptattention, name) is not None, name
    import conceptattention.explain  # noqa: F401 - the package attribute stays the function, as before

    assert conceptattention.explain is sys.modules["conceptattention.explain"].explain
    assert callable(conceptattention.explain)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        conceptattention.nope  # noqa: B018


# ----------------------------------------------------------------------------------------------------------------
# Quiet runs


def test_generate_on_the_shipped_model_prints_no_library_noise(tmp_path):
    """float16 on CPU, one concept: once printed two torchvision warnings, loading bars, a "will fail" warning
    and a UserWarning with its source line."""
    result = run(["generate", "--out", "run", "--dtype", "float16", "--concepts", "boat"], tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "run" / "grid.png").is_file()
    err = result.stderr
    for noise in ("torchvision", "Loading pipeline components", "Loading weights", "will fail", "float16",
                  "UserWarning", "warnings.warn(", "Traceback"):
        assert noise not in err, (noise, err)
    warnings = [line for line in err.splitlines() if "warning" in line.lower()]
    assert warnings == [
        "conceptattention: warning: Softmax over a single concept is identically 1; using the raw scores instead. "
        "Add contrasting concepts (e.g. a background word) for a softmax-normalised map."
    ]
    bars = [part for part in err.replace("\r", "\n").splitlines() if "|" in part and "it/s" in part]
    assert bars and all("/20 [" in bar for bar in bars), err  # only our denoising bar (20 steps) remains


def test_quiet_console_restores_what_it_changed():
    import logging
    import warnings

    from diffusers.utils import logging as diffusers_logging

    from conceptattention.cli.console import quiet_console

    format_before = warnings.formatwarning
    with quiet_console():
        assert not diffusers_logging.is_progress_bar_enabled()
        assert logging.getLogger("transformers.utils.import_utils").filters
    assert diffusers_logging.is_progress_bar_enabled()
    assert not logging.getLogger("transformers.utils.import_utils").filters
    assert warnings.formatwarning is format_before


# ----------------------------------------------------------------------------------------------------------------
# Without the optional extras (a plain `pip install conceptattention`)


def test_without_extras_help_version_env_and_generate_work(tmp_path):
    blocked = (*OPTIONAL, *DEV_ONLY)
    for args in (["--help"], ["--version"], ["generate", "--help"], ["evaluate", "--help"], ["ablate", "--help"],
                 ["app", "--help"], ["env"]):
        result = run(args, blocked=blocked, tmp_path=tmp_path)
        assert result.returncode == 0, (args, result.stderr)
        assert "Traceback" not in result.stderr, args
    result = run(["generate", "--out", "run"], blocked=blocked, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "accelerate" not in result.stderr and "Traceback" not in result.stderr  # no advice to install it
    assert {"grid.png", "settings.json", "maps.safetensors"} <= {p.name for p in (tmp_path / "run").iterdir()}


@pytest.mark.parametrize(
    ("args", "extra", "missing"),
    [
        (["evaluate", "--dataset", "shapesworld", "--out", "ev"], "eval", "h5py"),
        (["ablate", "--sweep", "table3", "--dataset", "shapesworld", "--out", "ab"], "eval", "torchmetrics"),
        (["app"], "app", "gradio"),
    ],
)
def test_without_an_extra_the_command_names_it(tmp_path, args, extra, missing):
    result = run(args, blocked=(missing,), tmp_path=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"install conceptattention[{extra}]" in result.stderr
    assert f"{missing} not installed" in result.stderr
    assert result.stderr.startswith(f"conceptattention: error: conceptattention {args[0]} needs the '{extra}' extra")
    assert not (tmp_path / args[-1]).exists()


def test_library_use_without_an_extra_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchmetrics", None)
    monkeypatch.setitem(sys.modules, "torchmetrics.functional", None)
    monkeypatch.setitem(sys.modules, "torchmetrics.functional.classification", None)
    import torch

    from conceptattention.evaluation.metrics import per_image_counts

    with pytest.raises(MissingExtraError, match=r"install conceptattention\[eval\]") as caught:
        per_image_counts(torch.rand(4, 4), torch.ones(4, 4, dtype=torch.bool))
    assert isinstance(caught.value, ImportError) and isinstance(caught.value, RuntimeError)


def test_reading_imagenet_seg_without_h5py_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "h5py", None)
    from conceptattention.evaluation.datasets import ImageNetSegmentation

    (tmp_path / "gtsegs_ijcv.mat").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    with pytest.raises(MissingExtraError, match=r"needs h5py, which is not installed: install conceptattention\[eval\]"):
        ImageNetSegmentation(tmp_path / "gtsegs_ijcv.mat")


def test_several_processes_without_accelerate_name_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "accelerate", None)
    monkeypatch.setenv("WORLD_SIZE", "2")
    from conceptattention.evaluation.distributed import process_context

    with pytest.raises(MissingExtraError, match=r"several processes needs accelerate.*conceptattention\[eval\]"):
        process_context()


def test_require_names_the_extra_and_passes_other_import_errors():
    with pytest.raises(MissingExtraError, match=r"Reading x needs no_such_pkg_xyz, which is not installed: "
                                                r"install conceptattention\[video\]"):
        require("no_such_pkg_xyz.sub", "video", purpose="Reading x")
    with pytest.raises(MissingExtraError, match=r"conceptattention\[app\]"):
        lazy_function("no_such_pkg_xyz", "f", "app")()
    require_extra("eval", "this test")  # installed in the test environment: no error
