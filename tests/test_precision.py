"""Every precision that validation accepts on this machine trains, tests and evaluates end to end."""
import pytest
import torch

from cnnlab import recipe as rc
from cnnlab.spec import PRECISIONS, TrainerSpec
from cnnlab.tasks import evaluate
from cnnlab.tasks import train as train_task
from conftest import RECIPES

HERE = [p for p in PRECISIONS if not TrainerSpec(precision=p).preflight()]  # what this machine accepts
WEIGHTS = {"bf16-true": torch.bfloat16, "16-true": torch.float16, "64-true": torch.float64}  # else float32


@pytest.mark.parametrize("precision", HERE)
def test_every_accepted_precision_runs_end_to_end(precision, tmp_path):
    r = rc.load(RECIPES / "smoke.yaml", [f"output.dir={tmp_path}", f"trainer.precision={precision}", "trainer.max_epochs=2",
                                         "data.subset=16", "data.test_subset=10", "output.plots=false",
                                         "eval.tta=[hflip]"])
    out = train_task.run(r, progress=False)
    assert out["precision"] == precision and torch.isfinite(torch.tensor(out["test_loss"]))
    assert out["test_acc"] > 0.1  # above chance (10 classes) after 2 epochs of 144 images
    sd = torch.load(out["checkpoint"], weights_only=True)["state_dict"]
    assert sd["net.stages.0.0.0.weight"].dtype == WEIGHTS.get(precision, torch.float32)
    again = evaluate.run(out["run_dir"], progress=False)
    assert again["test_acc"] == pytest.approx(out["test_acc"], abs=1e-6)
    single, flip = out["tta"]["policies"]  # test-time augmentation in the same precision
    assert out["tta"]["precision"] == precision and single["acc"] == pytest.approx(out["test_acc"], abs=1e-6)
    assert flip["policy"] == "hflip" and torch.isfinite(torch.tensor(flip["nll"]))
