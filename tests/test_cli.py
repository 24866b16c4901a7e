import json

import pytest
import torch

from cnnlab import recipe as rc
from cnnlab.tasks import train as train_task
from conftest import RECIPES, write

SMOKE = str(RECIPES / "smoke.yaml")


def only_run(runs):
    [run] = list(runs.iterdir())
    return run


def test_help_lists_the_commands(cli):
    out = cli("--help").output
    for name in ("train", "finetune", "augment", "eval-tta", "bench-conv", "eval"):
        assert name in out


def test_train_smoke_end_to_end_then_eval(cli):
    res = cli("train", SMOKE, "--set", f"output.dir={cli.runs}")
    assert res.exit_code == 0, res.output
    run = only_run(cli.runs)
    assert run.name.startswith("smoke-")
    for f in ("recipe.yaml", "metrics.csv", "results.json", "curves.png", "checkpoints/best.ckpt", "checkpoints/last.ckpt"):
        assert (run / f).is_file(), f
    r = json.loads((run / "results.json").read_text())
    assert r["test_acc"] > 0.3, r["test_acc"]  # 10 classes: chance is 0.1
    assert r["epochs"] == 8 and r["images"] == {"train": 360, "val": 40, "test": 300}
    assert set(r["per_class_acc"]) == {"t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal",
                                       "shirt", "sneaker", "bag", "ankle boot"}
    assert r["train_images_per_s"] > 0 and r["versions"]["torch"] == torch.__version__
    assert "test accuracy" in res.output
    saved = rc.load(run / "recipe.yaml")
    assert saved.dump()["model"] == {"name": "vgg-small", "widths": [16, 32, 32], "depth": 1}

    ev = cli("eval", str(run))
    assert ev.exit_code == 0, ev.output
    e = json.loads((run / "eval.json").read_text())
    assert e["test_acc"] == pytest.approx(r["test_acc"])


def test_resume_continues_from_saved_epoch(cli):
    assert cli("train", SMOKE, "--set", f"output.dir={cli.runs}", "--set", "trainer.max_epochs=1").exit_code == 0
    run = only_run(cli.runs)
    res = cli("train", "--resume", str(run), "--set", "trainer.max_epochs=2")
    assert res.exit_code == 0, res.output
    assert only_run(cli.runs) == run
    r = json.loads((run / "results.json").read_text())
    assert r["epochs"] == 2 and r["resumed_from"].endswith("last.ckpt")
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2 * (360 // 32)  # two epochs of whole batches, not one, not three
    from cnnlab.report import epoch_metrics

    m = epoch_metrics(run / "metrics.csv")
    assert sorted(m["train/acc"]) == [0, 1] and sorted(m["val/acc"]) == [0, 1]  # the first epoch's rows kept


class Crash(Exception):
    pass



def test_resumed_run_matches_uninterrupted_run(tmp_path):
    import pytorch_lightning as pl

    class CrashAtEpoch(pl.Callback):
        def on_train_epoch_start(self, trainer, module):
            if trainer.current_epoch == 2:
                raise Crash

    over = ["trainer.max_epochs=4", "data.subset=20", "model.dropout=0.3"]
    straight = rc.load(SMOKE, over + [f"output.dir={tmp_path / 'a'}"])
    crashed = rc.load(SMOKE, over + [f"output.dir={tmp_path / 'b'}"])
    a = train_task.run(straight, progress=False)
    with pytest.raises(Crash):
        train_task.run(crashed, callbacks=[CrashAtEpoch()], progress=False)
    [run_b] = list((tmp_path / "b").iterdir())
    b = train_task.run(crashed, resume=run_b, progress=False)
    wa = torch.load(f"{a['run_dir']}/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    wb = torch.load(f"{b['run_dir']}/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "resumed weights differ from the uninterrupted run"
    assert a["test_acc"] == b["test_acc"]


def test_print_recipe_writes_nothing(cli):
    res = cli("train", SMOKE, "--set", f"output.dir={cli.runs}", "--set", "optim.lr=0.05", "--print-recipe")
    assert res.exit_code == 0 and "lr: 0.05" in res.output
    assert not cli.runs.exists()


@pytest.mark.parametrize("args,message", [
    (["train", "nope.yaml"], "recipe file not found: nope.yaml"),
    (["train", SMOKE, "--set", "optim.lrr=1"], "optim.lrr (--set): unknown key (did you mean 'lr'?)"),
    (["train", SMOKE, "--set", "trainer.max_epochs=many"], "trainer.max_epochs (--set): input should be a valid integer"),
    (["train", SMOKE, "--set", "model.name=resnet-smal"], "model.name (--set): 'resnet-smal' is not a model (did you mean 'resnet-small'?)"),
    (["train", SMOKE, "--set", "data.root=/nonexistent"], "data.root: Fashion-MNIST idx files"),
    (["train", "--resume", "/nonexistent"], "--resume: /nonexistent is not a run folder"),
    (["eval", "/nonexistent"], "file not found: /nonexistent (expected a run folder or a checkpoint file)"),
    (["eval-tta", "x.yaml"], "`cnnlab eval-tta` is not available yet"),
])
def test_user_errors_exit_2_without_traceback(cli, args, message):
    args = [a if a != SMOKE else a for a in args] + (["--set", f"output.dir={cli.runs}"] if args[0] == "train" and len(args) > 2 else [])
    res = cli(*args)
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    assert message in text, text
    assert "Traceback" not in res.output
    assert not cli.runs.exists()  # nothing half-written


def test_yaml_syntax_error_through_cli(cli, tmp_path):
    bad = write(tmp_path / "bad.yaml", "optim:\n  lr: 0.1\n  momentum: [0.9\n")
    res = cli("train", str(bad))
    assert res.exit_code == 2
    assert "line 4: not valid YAML" in " ".join(res.output.split())
