"""What a split across the ranks of an mlx.launch job refuses before anything loads or any plan is searched:
row-parallel slices that would cut quantization groups (core/tensor_parallel.py's check_split)."""

from __future__ import annotations

import time
from types import SimpleNamespace

import mlx.nn as nn
import pytest

from quantbench.core import generate
from quantbench.core.distributed import World
from quantbench.core.errors import InvalidRequest
from quantbench.core.families import family_for_folder
from quantbench.core.generation import GenerationSettings
from quantbench.core.lab import quantize_option
from quantbench.core.quant import QuantSpec
from quantbench.core.random_model import write_random_model
from quantbench.core.tensor_parallel import ROW, ShardRule, TensorParallelPlan, check_split


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_random_model(tmp_path_factory.mktemp("split") / "tiny", "tiny")


def split_check(folder, bits, ranks: int = 2):
    family = family_for_folder(folder)
    return check_split(family.build_transformer(folder), family.tensor_parallel, family.transformer.policy, ranks,
                       "transformer", bits)


def test_a_split_that_cuts_groups_names_the_layer_and_the_group_size_that_splits_whole(tiny):
    # tiny's modulation layer (norm_out.linear) takes 64 inputs: 32 a rank, half a group of 64.
    with pytest.raises(InvalidRequest, match=r"layer norm_out\.linear split 2 ways would cut quantization groups "
                                             r"of 64 \(a rank takes 32 of its 64 inputs\): groups of 32 split whole "
                                             r"\(4:hqq:32\) or run on fewer ranks"):
        split_check(tiny, QuantSpec(4, 64, "hqq"))
    reasons = split_check(tiny, QuantSpec(4, 32, "hqq"))
    assert reasons["norm_out.linear"] is None  # quantized, in groups that each rank holds whole


def test_a_layer_the_plan_keeps_in_full_precision_is_never_cut(tiny):
    family = family_for_folder(tiny)
    attention = [path for path, _ in family.build_transformer(tiny).named_modules()
                 if path.endswith((".to_q", ".to_k", ".to_v"))]  # column-parallel: whole groups
    split_check(tiny, {path: QuantSpec(4) for path in attention})  # the modulation stays whole: nothing to cut
    with pytest.raises(InvalidRequest, match=r"layer norm_out\.linear split 2"):
        split_check(tiny, {**{path: QuantSpec(4) for path in attention}, "norm_out.linear": QuantSpec(4)})


class OneRowLayer(nn.Module):
    def __init__(self, inputs: int):
        super().__init__()
        self.config = SimpleNamespace()
        self.layer = nn.Linear(inputs, 8)


class QuantizeAll:
    group_size = 64

    def full_precision_reason(self, path, module, group_size=None):
        return None


def test_no_group_size_that_splits_whole_says_so():
    plan = TensorParallelPlan((ShardRule("layer", ROW),), check=lambda config, ranks: None)
    with pytest.raises(InvalidRequest, match=r"layer layer split 2 ways would cut quantization groups of 32 \(a rank "
                                             r"takes 48 of its 96 inputs\): no group size splits whole: run on fewer "
                                             r"ranks"):
        check_split(OneRowLayer(96), plan, QuantizeAll(), 2, "transformer", QuantSpec(4, 32))
    assert check_split(OneRowLayer(128), plan, QuantizeAll(), 2, "transformer", QuantSpec(4, 64)) == {"layer": None}


@pytest.mark.parametrize("quantize, written", [("auto:3.5", "auto:3.5:rtn:32"), ("auto:2GB:hqq", "auto:2GB:hqq:32"),
                                               ("4:mse", "4:mse:32")])
def test_a_job_of_ranks_refuses_a_precision_that_cuts_groups_before_any_search(quantize, written, tiny, monkeypatch):
    """Found as a user: under mlx.launch, `generate -q auto:3.5` searched its plan for minutes, then refused it
    at the load. The budget's group size is checked first: a search never starts."""
    monkeypatch.setattr(generate, "world", lambda: World(size=2, hosts=("a", "b")))
    searched = []
    monkeypatch.setattr(quantize_option, "_searched_plan", lambda *a, **k: searched.append(a))
    settings = GenerationSettings(model=str(tiny), prompt="a red ring", width=64, height=64, steps=1,
                                  quantize=quantize)
    started = time.monotonic()
    with pytest.raises(InvalidRequest, match=rf"groups of 32 split whole \({written}\) or run on fewer ranks"):
        generate.plan_generation(settings)
    assert not searched and time.monotonic() - started < 10


def test_one_rank_checks_nothing(tiny, monkeypatch):
    settings = GenerationSettings(model=str(tiny), prompt="a red ring", width=64, height=64, steps=1, quantize="4")
    assert generate.plan_generation(settings).transformer_bits == QuantSpec(4)
