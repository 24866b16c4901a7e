import json

import pytest
import torch

from cnnlab import recipe as rc
from cnnlab.engine.run import train as train_run
from conftest import RECIPES, write

SMOKE = str(RECIPES / "smoke.yaml")


def only_run(runs):
    [run] = list(runs.iterdir())
    return run


def test_help_lists_the_commands(cli):
    import re

    out = cli("--help").output
    listed = set(re.findall(r"^│ ([a-z][a-z-]*) ", out, re.M))  # the first word of each row of the commands box
    assert listed == {"train", "sweep", "eval", "compare", "augment", "finetune", "eval-tta", "bench-conv", "pack", "bench-data", "profile", "predict", "export",
                      "tune", "list", "cp"}


def test_train_smoke_end_to_end_then_eval(cli, smoke_run):
    run = smoke_run.path  # `cnnlab train recipes/smoke.yaml`, with augmentation and eval.tta
    assert run.name.startswith("smoke-")
    for f in ("recipe.yaml", "metrics.csv", "results.json", "curves.png", "checkpoints/best.ckpt", "checkpoints/last.ckpt"):
        assert (run / f).is_file(), f
    r = json.loads((run / "results.json").read_text())
    assert r["test_acc"] > 0.3, r["test_acc"]  # 10 classes: chance is 0.1
    assert r["epochs"] == 8 and r["images"] == {"train": 360, "val": 40, "test": 300}
    assert set(r["per_class_acc"]) == {"t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal",
                                       "shirt", "sneaker", "bag", "ankle boot"}
    assert r["train_images_per_s"] > 0 and r["versions"]["torch"] == torch.__version__
    assert "test accuracy" in smoke_run.output
    saved = rc.load(run / "recipe.yaml")
    assert saved.dump()["model"] == {"name": "vgg-small", "conv_impl": "direct", "widths": [16, 32, 32], "depth": 1}

    ev = cli("eval", str(run))
    assert ev.exit_code == 0, ev.output
    e = json.loads((run / "eval.json").read_text())
    assert e["test_acc"] == pytest.approx(r["test_acc"])


class Crash(Exception):
    pass


def crash_at(epoch: int):
    import pytorch_lightning as pl

    class CrashAtEpoch(pl.Callback):
        def on_train_epoch_start(self, trainer, module):
            if trainer.current_epoch == epoch:
                raise Crash

    return CrashAtEpoch()


def test_resume_from_the_cli_continues_keeps_metrics_and_the_recipe(cli):
    r = rc.load(SMOKE, [f"output.dir={cli.runs}", "trainer.max_epochs=3"])
    with pytest.raises(Crash):
        train_run(r, callbacks=[crash_at(2)], progress=False)
    run = only_run(cli.runs)
    from cnnlab.io import epoch_metrics

    assert sorted(epoch_metrics(run / "metrics.csv")["train/acc"]) == [0, 1]  # on disk at the crash
    recipe_before = (run / "recipe.yaml").read_text()

    refused = cli("train", "--resume", str(run), "--set", "trainer.max_epochs=4")
    assert refused.exit_code == 2 and "--set trainer.max_epochs=4 would change it" in " ".join(refused.output.split())

    res = cli("train", "--resume", str(run), "--set", "trainer.accelerator=cpu")
    assert res.exit_code == 0, res.output
    assert only_run(cli.runs) == run and (run / "recipe.yaml").read_text() == recipe_before
    out = json.loads((run / "results.json").read_text())
    assert out["epochs"] == 3 and out["resumed_from"].endswith("last.ckpt")
    assert out["resume_overrides"] == ["trainer.accelerator=cpu"]
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 3 * (360 // 32)  # three epochs of whole batches
    m = epoch_metrics(run / "metrics.csv")
    assert sorted(m["train/acc"]) == [0, 1, 2] and sorted(m["val/acc"]) == [0, 1, 2]  # no epoch lost or twice


def test_a_crash_during_the_resumed_part_keeps_every_earlier_row_on_disk(tmp_path):
    from cnnlab.io import epoch_metrics

    r = rc.load(SMOKE, [f"output.dir={tmp_path}", "trainer.max_epochs=4", "data.subset=10", "output.plots=false"])
    with pytest.raises(Crash):
        train_run(r, callbacks=[crash_at(2)], progress=False)
    [run] = list(tmp_path.iterdir())
    with pytest.raises(Crash):
        train_run(r, resume=run, callbacks=[crash_at(3)], progress=False)
    assert sorted(epoch_metrics(run / "metrics.csv")["train/acc"]) == [0, 1, 2]


AUGMENT = "augment.ops=[{name: shift, max_px: 2}, {name: hflip}, {name: color_jitter, brightness: 0.3}]"


# at an epoch's end; mid-epoch, with loader workers and real signals: tests/test_reliability.py
@pytest.mark.slow
@pytest.mark.parametrize("augment", [[], ["augment.where=device", AUGMENT], ["augment.where=loader", AUGMENT],
                                     ["optim.weights={dtype: bf16, rounding: stochastic}"],
                                     ["optim.name=adamw", "optim.lr=0.003", "optim.weights={dtype: fixed16, state: bf16}"]],
                         ids=["none", "device", "loader", "bf16-weights-sgd", "fixed16-weights-adamw"])
def test_resumed_run_matches_uninterrupted_run(tmp_path, augment):
    over = ["trainer.max_epochs=4", "data.subset=20", "model.dropout=0.3", "output.plots=false", *augment]
    straight = rc.load(SMOKE, over + [f"output.dir={tmp_path / 'a'}"])
    crashed = rc.load(SMOKE, over + [f"output.dir={tmp_path / 'b'}"])
    a = train_run(straight, progress=False)
    with pytest.raises(Crash):
        train_run(crashed, callbacks=[crash_at(2)], progress=False)
    [run_b] = list((tmp_path / "b").iterdir())
    b = train_run(crashed, resume=run_b, progress=False)
    wa = torch.load(f"{a['run_dir']}/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    wb = torch.load(f"{b['run_dir']}/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "resumed weights differ from the uninterrupted run"
    assert a["test_acc"] == b["test_acc"]


def test_eval_of_a_loose_checkpoint_trained_for_cuda_runs_here_and_writes_beside_it(cli, tmp_path):
    res = cli("train", SMOKE, "--set", f"output.dir={cli.runs}", "--set", "trainer.max_epochs=1", "--set", "output.plots=false")
    run = only_run(cli.runs)
    trained = json.loads((run / "results.json").read_text())
    ckpt = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    ckpt["hyper_parameters"]["recipe"]["trainer"].update(accelerator="cuda", precision="16-mixed", devices=2, strategy="ddp")
    loose = tmp_path / "elsewhere" / "moved.ckpt"
    loose.parent.mkdir()
    torch.save(ckpt, loose)
    res = cli("eval", str(loose))
    assert res.exit_code == 0, res.output
    e = json.loads((tmp_path / "elsewhere" / "moved.eval.json").read_text())  # beside the file, named after it
    # here: the same float32 arithmetic; on a GPU at 16-mixed a test image or two may change its answer
    tol = 1e-6 if not torch.cuda.is_available() else 2 / 300
    assert e["test_acc"] == pytest.approx(trained["test_acc"], abs=tol) and e["images"] == 300
    assert e["trained_with"] == {"accelerator": "cuda", "precision": "16-mixed"}
    if not torch.cuda.is_available():
        assert e["precision"] == "32-true" and e["device"]["type"] == "cpu"
    else:
        assert e["precision"] == "16-mixed" and e["device"]["type"] == "cuda"
    res = cli("eval", str(run), "--out", str(tmp_path / "mine.json"))
    assert res.exit_code == 0 and json.loads((tmp_path / "mine.json").read_text())["test_acc"] == pytest.approx(trained["test_acc"])
    assert not (run / "eval.json").exists()


@pytest.mark.parametrize("command", [["finetune", str(RECIPES / "transfer_similar.yaml"), "--sweep"],
                                     ["augment", str(RECIPES / "augment_fmnist.yaml")]])
def test_commands_that_make_several_runs_refuse_data_parallel_launches(cli, command):
    res = cli(*command, "--set", "trainer.devices=2", "--set", "trainer.strategy=ddp")
    assert res.exit_code == 2 and "Traceback" not in res.output
    name = " ".join(c for c in command if not c.endswith(".yaml"))
    assert f"`cnnlab {name}` runs in one process" in " ".join(res.output.split())
    assert list(cli.cwd.iterdir()) == []


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
    (["eval-tta", "/nonexistent"], "file not found: /nonexistent (expected a run folder or a checkpoint file)"),
])
def test_user_errors_exit_2_without_traceback(cli, args, message):
    res = cli(*args)  # output.dir stays the default `runs`, relative to the empty working folder
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    assert message in text, text
    assert "Traceback" not in res.output
    assert list(cli.cwd.iterdir()) == []  # nothing half-written


def test_yaml_syntax_error_through_cli(cli, tmp_path):
    bad = write(tmp_path / "bad.yaml", "optim:\n  lr: 0.1\n  momentum: [0.9\n")
    res = cli("train", str(bad))
    assert res.exit_code == 2
    assert "line 4: not valid YAML" in " ".join(res.output.split())


def test_a_file_that_is_not_a_checkpoint_is_one_line_without_torchs_advice(cli, tmp_path, smoke_run):
    import pickle

    import torch

    class Evil:  # what a tampered checkpoint would carry: an object, not tensors
        def __reduce__(self):
            return (print, ("code ran",))

    good = (smoke_run.path / "checkpoints" / "last.ckpt").read_bytes()
    files = {"evil.ckpt": pickle.dumps(Evil()), "evil2.ckpt": pickle.dumps(Evil(), protocol=2),
             "cut.ckpt": good[: len(good) // 2], "empty.ckpt": b"", "text.ckpt": b"not a checkpoint"}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    torch.save({"a": 1}, tmp_path / "other.ckpt")
    objects = "holds Python objects that a safe load refuses: cnnlab never runs code from a file"
    for name, why in (("evil.ckpt", objects), ("evil2.ckpt", objects), ("other.ckpt", "is not a cnnlab checkpoint: no recipe inside"),
                      ("cut.ckpt", "is truncated or damaged (not a whole torch file)"), ("empty.ckpt", "is empty"),
                      ("text.ckpt", "is not a torch file")):
        res = cli("eval", str(tmp_path / name))
        assert res.exit_code == 2 and "code ran" not in res.output
        [line] = res.output.strip().splitlines()  # no torch warning either
        assert line == f"error: {tmp_path / name} {why}"
        assert "weights_only" not in line
    # a run folder whose last checkpoint was cut short: --resume says so in one line
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "recipe.yaml").write_text((smoke_run.path / "recipe.yaml").read_text())
    (run / "checkpoints" / "last.ckpt").write_bytes(good[: len(good) // 2])
    res = cli("train", "--resume", str(run))
    assert res.exit_code == 2 and res.output.strip() == f"error: --resume: {run / 'checkpoints' / 'last.ckpt'} is truncated or damaged (not a whole torch file)"
