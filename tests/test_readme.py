"""The README's Python tour runs as written (all ``python`` blocks, in order, in one namespace).

The decorrelation block refers to a science/template/difference-image/kernel set the reader brings;
the test provides a small synthetic one under those names.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _pythonBlocks() -> list[str]:
    if not README.is_file():
        pytest.skip("README.md is not next to the tests (installed test run without the source tree)")
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_python_blocks_run(tmp_path, monkeypatch, capsys):
    from diffcal.decorrelation_cli import simulatePair

    blocks = _pythonBlocks()
    assert len(blocks) >= 4
    monkeypatch.chdir(tmp_path)  # the tour writes exposure.fits
    pair = simulatePair(256, seed=3)
    namespace = {k: pair[k] for k in ("science", "template", "diffim", "kernel")}
    for i, block in enumerate(blocks):
        try:
            exec(compile(block, f"README.md python block {i}", "exec"), namespace)
        except Exception as err:  # pragma: no cover - the message says which block failed
            pytest.fail(f"README python block {i} failed: {type(err).__name__}: {err}\n{block}")
    out = capsys.readouterr().out
    assert out.strip(), "the tour prints its results"
    assert (tmp_path / "exposure.fits").is_file()
    # the blocks' results are what they say
    assert namespace["stitched"].getBBox() == namespace["exp"].getBBox()
    assert namespace["corrected"].getBBox() == pair["diffim"].getBBox()
    assert namespace["result"].job["astrometry_final_ndof"] > 0
    assert namespace["task"].run(3.0).result == 6.0
