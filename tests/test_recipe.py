from pathlib import Path

import pytest

from cnnlab import recipe as rc
from conftest import RECIPES, write


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_validates(path):
    r = rc.load(path)
    assert r.output.name == path.stem


def problems(tmp_path, text, overrides=()):
    with pytest.raises(rc.RecipeError) as e:
        rc.load(write(tmp_path / "r.yaml", text), overrides)
    return e.value.problems


def test_unknown_key_names_line_and_suggests(tmp_path):
    [p] = problems(tmp_path, "optim:\n  name: sgd\n  lrr: 0.1\n")
    assert p.startswith("optim.lrr (line 3): unknown key (did you mean 'lr'?)")
    assert "allowed:" in p and "momentum" in p


def test_unknown_section(tmp_path):
    [p] = problems(tmp_path, "optimizer:\n  lr: 0.1\n")
    assert "optimizer (line 1): unknown key (did you mean 'optim'?)" in p


def test_every_problem_reported_at_once(tmp_path):
    text = ("data:\n  subset: -3\n"
            "model:\n  name: vgg-small\n  widht: [8]\n"
            "optim:\n  name: adamww\n"
            "trainer:\n  max_epochs: three\n")
    ps = problems(tmp_path, text)
    assert len(ps) == 4, ps
    joined = "\n".join(ps)
    assert "data.subset (line 2): input should be greater than or equal to 1, got -3" in joined
    assert "model.widht (line 5): unknown key (did you mean 'widths'?)" in joined
    assert "optim.name (line 7): 'adamww' is not allowed (did you mean 'adamw'?); choose from sgd, adamw" in joined
    assert "trainer.max_epochs (line 9)" in joined and "'three'" in joined


def test_model_kwargs_checked_against_builder_signature(tmp_path):
    [p] = problems(tmp_path, "model:\n  name: vgg-small\n  depth: 0\n")
    assert p.startswith("model.depth (line 3): input should be greater than or equal to 1")


def test_unknown_model_and_source_suggest(tmp_path):
    ps = problems(tmp_path, "model:\n  name: vgg-smal\ndata:\n  source: fashion_mnist\n")
    joined = "\n".join(ps)
    assert "model.name (line 2): 'vgg-smal' is not a model (did you mean 'vgg-small'?)" in joined
    assert "data.source (line 4): 'fashion_mnist' is not a data source (did you mean 'fashion-mnist'?)" in joined


def test_unknown_torchvision_model(tmp_path):
    [p] = problems(tmp_path, "model:\n  name: torchvision:resnet19\n")
    assert "torchvision:resnet19" in p and "did you mean 'resnet18'" in p


def test_precision_needs_cuda_on_cpu_reported_with_other_problems(tmp_path):
    ps = problems(tmp_path, "optim:\n  lr: 0\ntrainer:\n  accelerator: cpu\n  precision: 16-mixed\n")
    assert ps[0].startswith("optim.lr (line 2)")
    assert ps[1].startswith("trainer.precision (line 5): '16-mixed' needs a CUDA device; on cpu choose from")
    assert "bf16-mixed" in ps[1]


def test_unknown_strategy(tmp_path):
    [p] = problems(tmp_path, "trainer:\n  strategy: dpp\n")
    assert "'dpp' is not a Lightning strategy (did you mean 'ddp'?)" in p


def test_overrides_apply_and_validate(tmp_path):
    path = write(tmp_path / "r.yaml", "optim:\n  lr: 0.1\n")
    r = rc.load(path, ["optim.lr=0.05", "trainer.max_epochs=3", "model.widths=[4, 8]"])
    assert r.optim.lr == 0.05 and r.trainer.max_epochs == 3 and r.model.kwargs() == {"widths": [4, 8]}
    ps = problems(tmp_path, "optim:\n  lr: 0.1\n", ["optim.lr=-1"])
    assert ps == ["optim.lr (--set): input should be greater than 0, got -1"]
    ps = problems(tmp_path, "{}\n", ["optim.lr"])
    assert ps == ["--set 'optim.lr': expected KEY=VALUE, e.g. --set optim.lr=0.05"]
    ps = problems(tmp_path, "seed: 0\n", ["seed.x=1"])
    assert "'seed' is not a section" in ps[0]


def test_yaml_syntax_error_and_missing_file(tmp_path):
    with pytest.raises(rc.RecipeError) as e:
        rc.load(write(tmp_path / "r.yaml", "optim:\n  lr: [0.1\n"))
    assert "not valid YAML" in e.value.problems[0] and "line" in e.value.problems[0]
    with pytest.raises(rc.RecipeError) as e:
        rc.load(tmp_path / "missing.yaml")
    assert e.value.problems == [f"recipe file not found: {tmp_path / 'missing.yaml'}"]


def test_top_level_must_be_mapping(tmp_path):
    [p] = problems(tmp_path, "- 1\n- 2\n")
    assert "a recipe is a mapping of sections" in p


def test_dump_round_trips(tmp_path):
    r = rc.load(RECIPES / "fashion_mnist.yaml")
    again = rc.validate(r.dump(), "dump")
    assert again.dump() == r.dump()


def test_sweep_sizes_take_all_last_and_must_ascend(tmp_path):
    ok = "finetune:\n  sweep: {sizes: [10, 100, all], max_epochs: [30, 8, 2]}\n"
    assert rc.load(write(tmp_path / "ok.yaml", ok)).finetune.sweep.sizes == [10, 100, "all"]
    [p] = problems(tmp_path, "finetune:\n  sweep: {sizes: [all, 10], max_epochs: [1, 2]}\n")
    assert p.startswith("finetune.sweep.sizes") and "ascending" in p
    [p] = problems(tmp_path, "finetune:\n  sweep: {sizes: [10, lots], max_epochs: [1, 2]}\n")
    assert p.startswith("finetune.sweep.sizes.1") and "'lots'" in p


def test_override_of_a_whole_list_names_set_not_the_files_line(tmp_path):
    text = "finetune:\n  sweep: {sizes: [10, 100], max_epochs: [1, 2]}\n"
    [p] = problems(tmp_path, text, ["finetune.sweep.sizes=[10, lots]"])
    assert p.startswith("finetune.sweep.sizes.1 (--set)"), p
