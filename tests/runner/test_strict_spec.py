"""Issue 28 item 8: no number is read from a bool, a string or a YAML 1.1 base-60 literal; a key given twice is
refused; `ehrseq run BAD.yaml` fails on the spec before torch is imported."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ehrseq_runner.spec.job_spec import SpecError, load_spec

from support.helpers import SMALL_SPEC

LAX = {"max_steps: true": ("train.max_steps=true", "train.max_steps: Input should be a valid integer"),
       'max_steps: "20"': ("train.max_steps='20'", "train.max_steps: Input should be a valid integer (got '20')"),
       "max_steps: 1:20": ("train.max_steps=1:20", "train.max_steps: Input should be a valid integer (got '1:20')"),
       "lr: false": ("train.lr=false", "train.lr: Input should be a valid number"),
       'lr: "0.1"': ("train.lr='0.1'", "train.lr: Input should be a valid number")}


@pytest.mark.parametrize("case", LAX)
def test_numbers_are_never_coerced(case):
    override, message = LAX[case]
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_spec(SMALL_SPEC, [override])


def test_numbers_still_read_as_numbers():
    spec = load_spec(SMALL_SPEC, ["train.lr=1e-3", "train.max_steps=20", "train.grad_clip=2"])
    assert (spec.train.lr, spec.train.max_steps, spec.train.grad_clip) == (0.001, 20, 2.0)


@pytest.mark.parametrize("text, line", [("name: a\nseed: 1\nseed: 2\n", 3),
                                        ("name: a\ntrain: {max_steps: 5, max_steps: 6}\n", 2)])
def test_a_key_given_twice_is_refused_naming_it(tmp_path, text, line):
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    with pytest.raises(SpecError, match=f"{path}: line {line} .*given twice"):
        load_spec(path)


@pytest.mark.slow
def test_a_bad_spec_fails_before_torch_is_imported(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntrain: {max_steps: true}\n")
    code = ("import sys\nfrom ehrseq_runner.cli import app\n"
            f"try:\n    app(['run', {str(bad)!r}], standalone_mode=False)\nexcept Exception as e:\n"
            "    print(type(e).__name__)\nprint('torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout.split()
    assert out == ["SpecError", "False"], out
