#!/usr/bin/env bash
# What a plain `pip install conceptattention` (no extras) gives a new user: build the wheel, install it WITHOUT
# extras into a fresh virtual environment outside the checkout, and run --help, --version, env and the main
# `generate` on the shipped ShapesWorld model; `evaluate` must then say to install conceptattention[eval].
# The test suite cannot see this: its set-up installs every extra. CI runs it (.ci/run).
#   usage: bash scripts/check_bare_wheel.sh      (PYTHON=python3.11 to choose the interpreter; needs PyPI access)
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
work="$(mktemp -d "${TMPDIR:-/tmp}/conceptattention-bare.XXXXXX")"
trap 'rm -rf "$work"' EXIT
unset PYTHONPATH  # the installed wheel must be what runs, not the checkout's sources
# one thread per op: on a shared 2-core CI machine, OpenMP's busy waiting made the 20-step generate 6x slower
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
started=$SECONDS
step() { echo "== check_bare_wheel: $* ($((SECONDS - started)) s)"; }

step "fresh virtual environment in $work"
"$PYTHON" -m venv "$work/venv"
python="$work/venv/bin/python"
# torch is pinned to the CPU wheel first, as in the Makefile: an unpinned torch pulls a multi-GB CUDA build
"$python" -m pip install -q torch==2.13.0

step "build the wheel (from a copy of the project files: the build writes nothing into the checkout)"
mkdir "$work/project"
cp -r "$repo/pyproject.toml" "$repo/README.md" "$repo/LICENSE" "$repo/src" "$work/project/"
find "$work/project/src" -name __pycache__ -prune -exec rm -rf {} +
"$python" -m pip wheel -q --no-deps --wheel-dir "$work/dist" "$work/project"
wheel="$(ls "$work"/dist/conceptattention-*.whl)"
step "the wheel ships the model but not its training record (plots and log stay in the repository)"
"$python" - "$wheel" <<'PY'
import sys, zipfile
names = set(zipfile.ZipFile(sys.argv[1]).namelist())
folder = "conceptattention/assets/shapesworld/"
shipped = sorted(name for name in names if name.startswith(folder))
unwanted = [folder + name for name in ("loss_curve.png", "samples.png", "train_log.json") if folder + name in names]
needed = [folder + name for name in ("model_index.json", "shapesworld.json") if folder + name not in names]
if unwanted or needed or not any(name.endswith(".safetensors") for name in shipped):
    sys.exit(f"check_bare_wheel: the wheel ships {unwanted} or lacks {needed} / the weights: {shipped}")
print(f"{len(shipped)} files of the shipped model, no training record")
PY

step "install $(basename "$wheel") without extras"
"$python" -m pip install -q "$wheel"
for module in h5py torchmetrics accelerate gradio imageio; do
    if "$python" -c "import $module" 2>/dev/null; then
        echo "check_bare_wheel: $module is installed, so this is no bare install" >&2
        exit 1
    fi
done

cd "$work"  # outside the checkout
ca="$work/venv/bin/conceptattention"
step "conceptattention --help / --version / env"
"$ca" --help >/dev/null
"$ca" --version
"$ca" env >"$work/env.txt"
head -n 6 "$work/env.txt"
step "conceptattention generate (shipped model)"
"$ca" generate --out "$work/run" 2>"$work/stderr"
cat "$work/stderr"
if grep -E "Traceback|torchvision|Loading pipeline components|Loading weights|accelerate" "$work/stderr"; then
    echo "check_bare_wheel: generate printed a traceback or library noise (above)" >&2
    exit 1
fi
for file in image.png grid.png maps.safetensors settings.json; do
    test -s "$work/run/$file" || { echo "check_bare_wheel: generate wrote no $file" >&2; exit 1; }
done

step "conceptattention evaluate --help, then evaluate without the eval extra"
"$ca" evaluate --help >/dev/null
status=0
"$ca" evaluate --dataset shapesworld --out "$work/evaluation" 2>"$work/stderr" || status=$?
cat "$work/stderr"
if [ "$status" -ne 2 ] || ! grep -q "install conceptattention\[eval\]" "$work/stderr" \
    || grep -q Traceback "$work/stderr" || [ -e "$work/evaluation" ]; then
    echo "check_bare_wheel: evaluate without the eval extra must exit 2 with 'install conceptattention[eval]'," \
        "no traceback and no output folder (exit status $status)" >&2
    exit 1
fi
step "ok"
