import os
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


def test_a_key_given_twice_names_the_key_and_both_lines(tmp_path):
    ps = problems(tmp_path, "seed: 1\noptim:\n  lr: 0.1\n  momentum: 0.9\n  lr: 0.5\nseed: 2\n"
                            "augment:\n  ops:\n    - {name: hflip, p: 0.5, p: 0.9}\n")
    assert ps == ["optim.lr (line 5): given twice, also on line 3; keep one (YAML would silently keep the later)",
                  "seed (line 6): given twice, also on line 1; keep one (YAML would silently keep the later)",
                  "augment.ops.0.p (line 9): given twice, also on line 9; keep one (YAML would silently keep the later)"]


def test_a_merge_key_overridden_is_not_a_repeat(tmp_path):
    r = rc.load(write(tmp_path / "r.yaml", "optim:\n  <<: {lr: 0.1, momentum: 0.8}\n  lr: 0.2\n"))
    assert (r.optim.lr, r.optim.momentum) == (0.2, 0.8)


@pytest.mark.parametrize("text", ["", "\n   \n", "# a comment\n  # another\n", "---\n"])
def test_an_empty_recipe_is_an_error(tmp_path, text):
    [p] = problems(tmp_path, text)
    assert p.startswith("the file is empty"), p


def test_explicit_empty_mapping_means_every_default(tmp_path):
    r = rc.load(write(tmp_path / "r.yaml", "{}\n"))
    assert r.output.name == "r" and r.model_copy(update={"output": rc.Recipe().output}) == rc.Recipe()


@pytest.mark.parametrize("text,message", [
    ("optim: {lr: !!float abc}\n", "line 1: not valid YAML: cannot read 'abc' as float"),
    ("seed: 2020-13-45\n", "line 1: not valid YAML: cannot read '2020-13-45' as timestamp"),
    ("seed: !!int\n", "line 1: not valid YAML: cannot read '' as int"),
    ("seed: 1\x00\n", "line 1: not valid YAML: unacceptable character #x0000"),
])
def test_scalars_yaml_cannot_read_are_recipe_errors(tmp_path, text, message):
    [p] = problems(tmp_path, text)
    assert p.startswith(message), p


def test_non_utf8_recipe_names_line_and_byte(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_bytes("optim:\n  name: sgd  # é\n".encode("latin-1"))
    with pytest.raises(rc.RecipeError) as e:
        rc.load(path)
    assert e.value.problems == ["line 2: not UTF-8 text (byte 0xe9 at offset 22); save the recipe as UTF-8"]


def test_output_name_is_a_folder_name(tmp_path):
    [p] = problems(tmp_path, "output:\n  name: ../../elsewhere\n")
    assert p == "output.name (line 2): a folder name (no '/'), got '../../elsewhere'"


# --------------------------------------------------------------------------- pre-flight: this machine


@pytest.fixture
def no_gpu(monkeypatch):
    """This machine as one without CUDA or MPS, whatever it has."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.mark.parametrize("trainer,problem", [
    ({"accelerator": "cuda"}, "trainer.accelerator: 'cuda' needs a CUDA device and none is visible; use cpu or auto"),
    ({"accelerator": "gpu", "precision": "16-mixed"}, "trainer.accelerator: 'gpu' needs a CUDA device and none is visible; use cpu or auto"),
    ({"precision": "16-mixed"}, "trainer.precision: '16-mixed' needs a CUDA device; on cpu choose from 32-true, bf16-mixed, bf16-true, 64-true"),
    ({"precision": "16-true"}, "trainer.precision: '16-true' needs a CUDA device; on cpu choose from 32-true, bf16-mixed, bf16-true, 64-true"),
])
def test_machine_checks_are_a_preflight_not_validation(no_gpu, trainer, problem):
    raw = {"trainer": trainer}
    assert rc.validate(raw, "a GPU run's recipe").trainer.accelerator == trainer.get("accelerator", "auto")
    with pytest.raises(rc.RecipeError) as e:
        rc.validate(raw, "x", preflight=True)
    assert e.value.problems == [problem]


def test_bf16_on_a_gpu_that_only_emulates_it_is_refused(monkeypatch):
    """A GPU without native bf16 (before Ampere) runs it emulated, far slower: not accepted."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    with pytest.raises(rc.RecipeError) as e:
        rc.validate({"trainer": {"precision": "bf16-mixed"}}, "x", preflight=True)
    assert e.value.problems == ["trainer.precision: 'bf16-mixed': this CUDA device has no native bfloat16 (only "
                                "emulated, far slower); use 16-mixed or 32-true"]
    assert rc.validate({"trainer": {"precision": "16-mixed"}}, "x", preflight=True).trainer.precision == "16-mixed"


def test_preflight_problems_come_with_the_recipes_own_and_its_lines(no_gpu, tmp_path):
    path = write(tmp_path / "r.yaml", "optim:\n  lr: 0\ntrainer:\n  accelerator: cuda\n")
    with pytest.raises(rc.RecipeError) as e:
        rc.load(path, preflight=True)
    assert e.value.problems == ["optim.lr (line 2): input should be greater than 0, got 0",
                                "trainer.accelerator (line 4): 'cuda' needs a CUDA device and none is visible; use cpu or auto"]
    assert rc.load(path, ["optim.lr=0.1"]).trainer.accelerator == "cuda"  # no pre-flight: a valid recipe


def test_train_refuses_a_cuda_recipe_on_a_machine_without_before_writing(no_gpu, cli):
    res = cli("train", str(RECIPES / "smoke.yaml"), "--set", f"output.dir={cli.runs}", "--set", "trainer.accelerator=cuda")
    assert res.exit_code == 2 and "trainer.accelerator (--set): 'cuda' needs a CUDA device" in " ".join(res.output.split())
    assert not cli.runs.exists()
    res = cli("train", str(RECIPES / "smoke.yaml"), "--set", "trainer.accelerator=cuda", "--print-recipe")
    assert res.exit_code == 0 and "accelerator: cuda" in res.output


@pytest.mark.parametrize("command", [["augment", "augment_fmnist.yaml", "--ablate"], ["finetune", "transfer_similar.yaml"],
                                     ["finetune", "transfer_similar.yaml", "transfer_different.yaml", "--sweep"]])
def test_every_command_that_runs_checks_the_machine_first(no_gpu, cli, command):
    name, *rest = command
    args = [str(RECIPES / a) if a.endswith(".yaml") else a for a in rest]
    res = cli(name, *args, "--set", f"output.dir={cli.runs}", "--set", "trainer.precision=16-mixed")
    assert res.exit_code == 2, res.output
    assert "trainer.precision (--set): '16-mixed' needs a CUDA device; on cpu choose from" in " ".join(res.output.split())
    assert not cli.runs.exists()


def test_output_folder_under_a_file_is_refused_before_any_work(cli, tmp_path):
    blocker = write(tmp_path / "file", "not a folder\n")
    res = cli("train", str(RECIPES / "smoke.yaml"), "--set", f"output.dir={blocker}/runs")
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert f"output.dir (--set): cannot make run folders in {blocker}/runs: {blocker} is a file, not a folder" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwd", "file"] and list(cli.cwd.iterdir()) == []
    assert blocker.read_text() == "not a folder\n"


@pytest.fixture
def read_only(tmp_path):
    """A folder this process cannot write in: a chmod 500 one, or (root writes anywhere) /proc/1."""
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        yield ro
        ro.chmod(0o700)
    elif Path("/proc/1").is_dir() and not os.access("/proc/1", os.W_OK):
        yield Path("/proc/1")
    else:
        pytest.skip("no read-only folder for root here")


def test_output_folder_in_a_read_only_place_is_refused(read_only):
    with pytest.raises(rc.RecipeError) as e:
        rc.load(None, [f"output.dir={read_only}/runs"], preflight=True)
    assert e.value.problems == [f"output.dir (--set): cannot make run folders in {read_only}/runs: {read_only} is not writable"]


def test_a_run_folder_that_cannot_be_made_is_a_user_error_naming_output_dir(tmp_path):
    from cnnlab.errors import UserError
    from cnnlab.io import new_run_dir

    blocker = write(tmp_path / "file", "")
    with pytest.raises(UserError, match=r"^output.dir: cannot make the run folder .*/file/runs/x-\d{8}-\d{6}: Not a directory$"):
        new_run_dir(blocker / "runs", "x")


def test_a_checkpoint_trained_on_cuda_is_a_backbone_on_any_machine(no_gpu, tmp_path):
    """Its recipe says cuda and 16-mixed; only its data and model sections matter for reusing the net."""
    import torch

    from cnnlab.models import build_model
    from cnnlab.transfer import BACKBONES

    recipe = rc.load(RECIPES / "smoke.yaml", ["trainer.accelerator=cuda", "trainer.precision=16-mixed"]).dump()
    net = build_model(recipe["model"]["name"], 1, 10, **{k: v for k, v in recipe["model"].items() if k not in ("name", "conv_impl")})
    sd = {f"net.{k}": v for k, v in net.state_dict().items()} | {"mean": torch.full((1,), 0.3), "std": torch.full((1,), 0.2)}
    torch.save({"hyper_parameters": {"recipe": recipe, "num_classes": 10}, "state_dict": sd}, tmp_path / "gpu.ckpt")
    bb = BACKBONES.get("cnnlab")(str(tmp_path / "gpu.ckpt"))
    assert bb.mean == pytest.approx([0.3]) and bb.std == pytest.approx([0.2])
    assert all(torch.equal(a, b) for a, b in zip(bb.stages.state_dict().values(), net.stages.state_dict().values()))


def test_the_lightning_strategy_names_match_the_installed_lightning():
    """Recipes are checked against a copy of Lightning's strategy names (importing Lightning costs
    seconds); the copy is the installed Lightning's registry."""
    from pytorch_lightning.strategies import StrategyRegistry

    from cnnlab.spec import LIGHTNING_STRATEGIES

    assert LIGHTNING_STRATEGIES == set(StrategyRegistry.available_strategies())
