"""`cnnlab predict` on image files: the smoke run's 300 test images exported as PNG files into
class-named folders give, from the files alone, exactly eval's prediction for every image and eval's
accuracy; the CSV's columns and probabilities; --tta; unreadable, missing and non-checkpoint inputs."""
import csv
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from cnnlab.data.sources import resize
from cnnlab.data.spec import DataSpec
from cnnlab.errors import UserError
from cnnlab.tasks import predict as task


@pytest.fixture(scope="module")
def exported(smoke_run, tmp_path_factory):
    """The smoke run's test split as PNG files (<class>/<index>.png; 't-shirt/top' is two folders) with
    what `cnnlab eval` computes on it, in-process: the top-1 class of every image through the module
    rebuilt from the checkpoint, batch by batch as eval's test loader cuts them, and the accuracy."""
    from cnnlab.engine.checkpoint import load

    c = load(smoke_run.path)
    test = c.data.test
    folder = tmp_path_factory.mktemp("pngs") / "test"
    for i, (x, y) in enumerate(zip(test.images, test.labels)):
        d = folder / test.classes[int(y)]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(x[0].numpy(), "L").save(d / f"{i:03d}.png")
    c.module.eval()
    with torch.inference_mode():
        top1 = torch.cat([c.module(c.module.prepare(x)).argmax(-1) for x, _ in c.data.test_dataloader()])
    acc = (top1 == test.labels).double().mean().item()
    tested = json.loads((smoke_run.path / "results.json").read_text())["test_acc"]  # Trainer.test, same checkpoint
    assert round(tested * len(top1)) == round(acc * len(top1))
    return {"folder": folder, "classes": test.classes, "labels": test.labels, "images": test.images,
            "top1": top1, "acc": acc, "module": c.module}


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def index(row: dict[str, str]) -> int:
    return int(Path(row["path"]).stem)


def test_predict_from_files_equals_eval_image_for_image(cli, smoke_run, exported):
    res = cli("predict", str(smoke_run.path), str(exported["folder"]))
    assert res.exit_code == 0, res.output
    out = rows(smoke_run.path / "predictions.csv")  # the default --out: RUN_DIR/predictions.csv
    assert list(out[0]) == ["path", "class", "prob", "class_2", "prob_2", "class_3", "prob_3", "label"]
    assert sorted(index(r) for r in out) == list(range(300))  # every image once, nothing else
    classes = exported["classes"]
    for r in out:
        i = index(r)
        assert r["class"] == classes[int(exported["top1"][i])], r  # eval's top-1, from the file alone
        assert r["label"] == classes[int(exported["labels"][i])]  # from the folder (t-shirt/top: two folders)
        p = [float(r["prob"]), float(r["prob_2"]), float(r["prob_3"])]
        assert p == sorted(p, reverse=True) and sum(p) <= 1 + 1e-5 and p[0] > 0, r
        assert len({r["class"], r["class_2"], r["class_3"]}) == 3
    correct = sum(r["class"] == r["label"] for r in out)
    assert correct == round(exported["acc"] * 300)  # eval's accuracy, exactly: the same images right
    assert f"{correct / 300:.2%} ({correct} of 300 files in class-named folders)" in res.output


def test_tta_and_skipped_files_with_top_2_into_out(cli, exported, smoke_run, tmp_path):
    """--tta hflip: each image's probabilities are the mean of its own and its mirror's (the run's
    eval.agg, mean-prob); --bad-images skip leaves the broken file out and lists it."""
    folder = tmp_path / "some"
    picked = sorted((exported["folder"] / "trouser").iterdir())[:4] + sorted((exported["folder"] / "bag").iterdir())[:4]
    for f in picked:
        (folder / f.parent.name).mkdir(parents=True, exist_ok=True)
        (folder / f.parent.name / f.name).write_bytes(f.read_bytes())
    (folder / "bag" / "broken.png").write_bytes(b"not a png")
    csv_path = tmp_path / "tta.csv"
    res = cli("predict", str(smoke_run.path), str(folder), "--tta", "hflip", "--top", "2", "--out", str(csv_path),
              "--bad-images", "skip")
    assert res.exit_code == 0, res.output
    assert "skipped" in res.output and "broken.png" in res.output and "8 predicted of 9 files" in res.output
    out = rows(csv_path)
    assert list(out[0]) == ["path", "class", "prob", "class_2", "prob_2", "label"] and len(out) == 8
    m = exported["module"]
    x = exported["images"][[index(r) for r in out]]
    with torch.inference_mode():
        p = (m(m.prepare(x)).softmax(-1) + m(m.prepare(x.flip(-1))).softmax(-1)) / 2
    top = p.topk(2, dim=-1)
    for r, prob, cls in zip(out, top.values, top.indices):
        assert [r["class"], r["class_2"]] == [exported["classes"][int(c)] for c in cls]
        assert [float(r["prob"]), float(r["prob_2"])] == pytest.approx(prob.tolist(), abs=1e-5)


def test_a_broken_file_under_bad_images_error_is_one_line_and_nothing_is_written(cli, smoke_run, exported, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "a.png").write_bytes(next((exported["folder"] / "coat").iterdir()).read_bytes())
    (folder / "broken.png").write_bytes(b"not a png")
    res = cli("predict", str(smoke_run.path), str(folder), "--out", str(tmp_path / "p.csv"))  # smoke.yaml: bad_images error
    assert res.exit_code == 2, res.output
    assert "broken.png" in res.output and "--bad-images skip" in res.output and res.output.strip().count("\n") == 0
    assert list(tmp_path.glob("*.csv")) == [] and list(tmp_path.glob(".*tmp")) == []


@pytest.mark.parametrize("case,message", [
    ("empty", "no image files in the folder"),
    ("pattern", "matches no image files"),
    ("missing", "no such file or folder"),
    ("not_a_checkpoint", "is not a torch file"),
    ("top", "--top 0: must be at least 1"),
    ("tta", "'hflp' is not a test-time view (did you mean 'hflip'?)"),
])
def test_bad_inputs_are_one_line_exit_2_and_nothing_is_written(cli, smoke_run, exported, tmp_path, case, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.ckpt").write_text("not a checkpoint")
    images = {"empty": str(tmp_path / "empty"), "pattern": str(tmp_path / "*.jpg"), "missing": str(tmp_path / "nope.png")}
    run = str(tmp_path / "notes.ckpt") if case == "not_a_checkpoint" else str(smoke_run.path)
    extra = {"top": ["--top", "0"], "tta": ["--tta", "hflp"]}.get(case, [])
    res = cli("predict", run, images.get(case, str(exported["folder"])), *extra, "--out", str(tmp_path / "p.csv"))
    assert res.exit_code == 2 and message in res.output and res.output.strip().count("\n") == 0, res.output
    assert not (tmp_path / "p.csv").exists()


def test_files_folders_and_patterns_are_found_once_in_order(tmp_path):
    for rel in ("a/coat/1.png", "a/coat/2.JPG", "a/.hidden/3.png", "a/coat/notes.txt", "b/t-shirt_top/4.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    found = task.find_images([str(tmp_path / "a"), str(tmp_path / "a/coat/1.png"), str(tmp_path / "b/*/*.png")])
    assert found == [tmp_path / "a/coat/1.png", tmp_path / "a/coat/2.JPG", tmp_path / "b/t-shirt_top/4.png"]
    classes = ["t-shirt/top", "trouser", "coat", "top"]
    assert [task.label_of(f, classes) for f in found] == [2, 2, 0]
    assert task.label_of(Path("x/t-shirt/top/5.png"), classes) == 0  # the longer name, spelled by two folders
    assert task.label_of(Path("x/top/5.png"), classes) == 3
    assert task.label_of(Path("coat/shoes/5.png"), classes) == 2  # the nearest class folder above the file
    assert task.label_of(Path("photos/5.png"), classes) is None
    assert task.find_images([str(tmp_path / "a/.hidden")]) == [tmp_path / "a/.hidden/3.png"]  # named: searched
    with pytest.raises(UserError, match="IMAGES: .*nope: no such file or folder"):
        task.find_images([str(tmp_path / "nope")])


def test_top_defaults_to_3_or_every_class_and_more_than_the_classes_is_refused():
    assert (task.choose_top(None, 10), task.choose_top(None, 2), task.choose_top(5, 10)) == (3, 2, 5)
    with pytest.raises(UserError, match=r"--top 11: the run has 10 classes; choose 1..10"):
        task.choose_top(11, 10)


def test_a_resized_builtin_source_reads_files_through_the_sources_own_resize(exported):
    """A fashion-mnist run at data.image_size 40: each 28 px PNG read alone is bit-for-bit the row the
    data module's resize makes of the whole split (batch of 300, one interpolate)."""
    r = task.reading(DataSpec(source="fashion-mnist", image_size=40), (1, 40, 40))
    files = sorted(exported["folder"].rglob("*.png"), key=lambda f: int(f.stem))
    read = torch.stack([task.read_file(f, r) for f in files])
    assert torch.equal(read, resize(exported["images"], 40))
