#!/usr/bin/env bash
# The whole test suite, as the README and CI run it:
#   1. a virtual environment with the package and its test extras (built from this checkout);
#   2. the C++ unit tests through ctest, in a Release build and again under
#      AddressSanitizer + UndefinedBehaviorSanitizer;
#   3. the pytest suite against the installed package.
# Environment knobs: PYTHON (interpreter to build the venv from, default python3),
# DIFFCAL_TEST_VENV (venv path, default .venv-test), DIFFCAL_SKIP_SANITIZERS=1.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
VENV=${DIFFCAL_TEST_VENV:-$ROOT/.venv-test}
JOBS=$(nproc 2>/dev/null || echo 2)

step() { printf '\n=== %s ===\n' "$*"; }

# pip, quiet; this machine type's pip configuration warns about absent local indexes on every
# call, so those lines are dropped (the full log is shown if pip fails).
pip_install() {
  local log
  log=$(mktemp)
  if python -m pip install -q --disable-pip-version-check "$@" >"$log" 2>&1; then
    grep -v '^WARNING: Location' "$log" || true
    rm -f "$log"
  else
    cat "$log"
    rm -f "$log"
    return 1
  fi
}

step "Python environment ($VENV)"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
pip_install --upgrade pip
pip_install "cmeel-eigen>=3.4" ninja cmake

step "C++ test framework (doctest)"
if [ ! -f /usr/include/doctest/doctest.h ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get install -y -qq doctest-dev >/dev/null 2>&1) || \
      { apt-get update -qq >/dev/null && apt-get install -y -qq doctest-dev >/dev/null; }
  else
    echo "doctest is missing: install the Debian package doctest-dev (needs root)" >&2
    exit 1
  fi
fi
echo "doctest $(dpkg-query -W -f '${Version}' doctest-dev 2>/dev/null || echo '(version unknown)')"

EIGEN_PREFIX=$(python -m cmeel cmake 2>/dev/null)

run_ctest() {  # $1 build dir, rest: extra cmake args
  local dir=$1; shift
  cmake -S . -B "$dir" -G Ninja -DDIFFCAL_BUILD_TESTS=ON -DDIFFCAL_BUILD_PYTHON=OFF \
        -DCMAKE_PREFIX_PATH="$EIGEN_PREFIX" "$@" >"$dir.configure.log" 2>&1 \
    || { cat "$dir.configure.log"; return 1; }
  cmake --build "$dir" -j "$JOBS"
  ctest --test-dir "$dir" --output-on-failure -j "$JOBS"
}

step "C++ unit tests (Release)"
mkdir -p build
run_ctest build/cpp-release -DCMAKE_BUILD_TYPE=Release

if [ "${DIFFCAL_SKIP_SANITIZERS:-0}" != 1 ]; then
  step "C++ unit tests (AddressSanitizer + UndefinedBehaviorSanitizer)"
  if echo 'int main(){return 0;}' | c++ -x c++ -fsanitize=address,undefined -o build/.sanitizer-probe - 2>/dev/null; then
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
      run_ctest build/cpp-sanitize -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDIFFCAL_SANITIZE=ON
  else
    echo "the toolchain cannot link -fsanitize=address,undefined: sanitizer run skipped"
  fi
fi

step "Install diffcal with test extras"
pip_install ".[test]"
python -c "import diffcal, diffcal._core as c; print('diffcal', diffcal.__version__, c.build_info())"

step "pytest"
cd "$ROOT/tests"   # import the installed package, not the source tree
python -m pytest -c "$ROOT/pyproject.toml" --rootdir "$ROOT" "$ROOT/tests" "$@"
