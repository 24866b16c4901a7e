"""Image files as a user's camera makes them: real photos (scikit-learn's two sample JPEGs) in every
mode and orientation, decoded straight to the run's size, in bounded memory, with a cache."""
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.data.images import Decode, UnreadableImage, decode_files, read_image
from conftest import ROOT


@pytest.fixture(scope="module")
def photos():
    """china.jpg and flower.jpg (640x427 RGB) as PIL images."""
    from sklearn.datasets import load_sample_images

    return [Image.fromarray(a) for a in load_sample_images().images]


def test_portrait_exif_photos_come_out_upright(tmp_path, photos):
    """A phone stores a portrait photo landscape and says 'rotate 90' in EXIF tag 0x0112."""
    upright = photos[0].transpose(Image.Transpose.ROTATE_90)  # what the camera saw: 427 x 640, portrait
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what the sensor wrote: landscape, turned a quarter left
    exif = Image.Exif()
    exif[0x0112] = 6  # the 0th row is the visual right: rotate 90 clockwise to view
    stored.save(tmp_path / "portrait.jpg", exif=exif, quality=95)
    upright.save(tmp_path / "reference.jpg", quality=95)
    d = Decode(size=64, resize="stretch")
    x, wh = read_image(tmp_path / "portrait.jpg", d)
    ref, _ = read_image(tmp_path / "reference.jpg", d)
    assert wh == (427, 640)  # the upright size is reported
    assert (x.float() - ref.float()).abs().mean() < 4  # JPEG noise only
    wrong = torch.from_numpy(np.asarray(stored.resize((64, 64), Image.BILINEAR))).permute(2, 0, 1)
    assert (wrong.float() - ref.float()).abs().mean() > 20  # ignoring the tag would be far off


@pytest.mark.parametrize("mode", ["L", "P", "P-transparent", "RGBA", "LA", "CMYK", "I;16", "1", "RGB"])
@pytest.mark.parametrize("channels", [3, 1])
def test_every_mode_converts_to_the_recipes_channels(tmp_path, photos, mode, channels):
    rgb = photos[1].resize((80, 60))
    if mode == "P-transparent":
        im = rgb.convert("P")
        im.info["transparency"] = 0
    elif mode == "I;16":
        im = Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257)  # mode I;16
    else:
        im = rgb.convert(mode)
    suffix = ".jpg" if mode == "CMYK" else ".png"
    im.save(tmp_path / f"x{suffix}", **({"transparency": 0} if mode == "P-transparent" else {}))
    x, wh = read_image(tmp_path / f"x{suffix}", Decode(size=16, channels=channels))
    assert x.dtype == torch.uint8 and x.shape == (channels, 16, 16) and wh == (80, 60)
    if mode == "I;16":  # 16-bit grey is scaled to 8 bits, not clipped to white
        rgb.convert("L").save(tmp_path / "grey.png")
        grey, _ = read_image(tmp_path / "grey.png", Decode(size=16, channels=channels))
        assert (x.float() - grey.float()).abs().max() <= 1


def test_alpha_is_composited_on_white(tmp_path):
    a = np.zeros((10, 10, 4), dtype=np.uint8)
    a[:, :5] = (255, 0, 0, 255)  # left half opaque red, right half fully transparent black
    Image.fromarray(a, "RGBA").save(tmp_path / "a.png")
    x, _ = read_image(tmp_path / "a.png", Decode(size=10))
    assert x[:, :, :4].float().mean((1, 2)).tolist() == [255, 0, 0]
    assert x[:, :, 6:].float().mean((1, 2)).tolist() == [255, 255, 255]


def test_the_aspect_ratio_is_kept(tmp_path):
    """A 200 x 100 image of red | green | blue columns (50, 100, 50 px)."""
    a = np.zeros((100, 200, 3), dtype=np.uint8)
    a[:, :50, 0], a[:, 50:150, 1], a[:, 150:, 2] = 255, 255, 255
    Image.fromarray(a).save(tmp_path / "wide.png")
    shorter, wh = read_image(tmp_path / "wide.png", Decode(size=50, resize="shorter"))
    assert wh == (200, 100) and shorter.shape == (3, 50, 50)
    assert shorter[1, :, 2:-2].float().mean() == 255 and shorter[0].float().mean() < 3  # the centre crop: green
    longer, _ = read_image(tmp_path / "wide.png", Decode(size=50, resize="longer"))
    assert longer[:, :12].max() == 0 and longer[:, -12:].max() == 0  # padded above and below
    assert longer[0, 25, :10].float().mean() > 200 and longer[2, 25, -10:].float().mean() > 200  # all of it, not squashed
    stretch, _ = read_image(tmp_path / "wide.png", Decode(size=50, resize="stretch"))
    assert stretch[0, :, :10].float().mean() > 200 and stretch[2, :, -10:].float().mean() > 200


def test_a_bomb_header_is_refused_without_decoding(tmp_path):
    from test_data import png_claiming

    (tmp_path / "bomb.png").write_bytes(png_claiming(60_000, 60_000))
    t0 = time.perf_counter()
    with pytest.raises(UnreadableImage, match="3,600,000,000 px is over the limit of 67,108,864 px"):
        read_image(tmp_path / "bomb.png", Decode(size=8))
    assert time.perf_counter() - t0 < 1  # 3.6 billion pixels were never decoded


def test_large_jpegs_are_decoded_at_a_reduced_dct_scale(tmp_path, photos):
    big = photos[0].resize((4032, 3024))
    big.save(tmp_path / "big.jpg", quality=90)
    with Image.open(tmp_path / "big.jpg") as im:
        im.draft(None, (299, 224))
        assert im.size == (504, 378)  # 1/8: what read_image decodes on the way to 224 px
    x, wh = read_image(tmp_path / "big.jpg", Decode(size=224))
    assert x.shape == (3, 224, 224) and wh == (4032, 3024)


def test_the_cache_hits_on_the_second_load_and_misses_after_a_file_changes(tmp_path, photos):
    for i in range(4):
        photos[i % 2].resize((64 + 8 * i, 48)).save(tmp_path / f"{i}.jpg")
    files = sorted(tmp_path.glob("*.jpg"))
    d = Decode(size=16, cache_dir=str(tmp_path / "cache"))
    first = decode_files(files, d)
    second = decode_files(files, d)
    assert not first.cached and second.cached and torch.equal(first.images, second.images)
    assert second.sizes == first.sizes == [(64 + 8 * i, 48) for i in range(4)]
    assert len(list((tmp_path / "cache").iterdir())) == 1  # written atomically: no temporary left behind
    photos[0].resize((40, 40)).save(files[2])  # a file changes
    third = decode_files(files, d)
    assert not third.cached and third.sizes[2] == (40, 40)
    assert not decode_files(files, Decode(size=24, cache_dir=d.cache_dir)).cached  # other settings: another entry


PEAK = """
import resource, sys
from pathlib import Path
from cnnlab.data.images import Decode, decode_files
files = sorted(Path(sys.argv[1]).glob("*"))
decode_files(files, Decode(size=32))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_source_resolution(tmp_path, photos):
    """The same 6 photos at 640 x 427 and at 4032 x 3024 (12 MP: 36 MB each decoded whole), decoded to
    32 px in a fresh process each: the peaks differ by far less than one full-size image."""
    for folder, size in (("small", (640, 427)), ("large", (4032, 3024))):
        (tmp_path / folder).mkdir()
        for i in range(6):
            photos[i % 2].resize(size).save(tmp_path / folder / f"{i}.jpg", quality=85)
    peaks = {f: int(subprocess.run([sys.executable, "-c", PEAK, str(tmp_path / f)], capture_output=True, text=True,
                                   check=True, cwd=ROOT).stdout.split()[-1]) for f in ("small", "large")}
    assert peaks["large"] - peaks["small"] < 24 * 1024, peaks  # KiB


def test_a_run_on_photos_reports_its_data(cli, tmp_path, photos):
    """A finished train run on an image folder: the report at the start, and results.json["data"]."""
    root = tmp_path / "photos"
    for split, n in (("train", {"china": 6, "flower": 2}), ("test", {"china": 2, "flower": 2})):
        for c, k in n.items():
            (root / split / c).mkdir(parents=True)
            for i in range(k):
                photos[c == "flower"].crop((0, 0, 400 - 10 * i, 300)).save(root / split / c / f"{i}.jpg")
    (root / "train" / "china" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    res = cli("train", str(ROOT / "recipes" / "smoke.yaml"), "--set", "data.source=imagefolder", "--set", f"data.root={root}",
              "--set", "data.image_size=16", "--set", "data.bad_images=skip", "--set", "data.subset=null",
              "--set", "data.test_subset=null", "--set", "data.val_split=0", "--set", "trainer.max_epochs=1",
              "--set", f"data.cache_dir={tmp_path / 'cache'}", "--set", f"output.dir={cli.runs}")
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    assert "data: imagefolder, 3x16x16, train 8 / val 0 / test 4; 12 files decoded" in out
    assert "originals 350x300 to 400x300 px" in out and "skipped 1 unreadable file(s)" in out
    assert "warning: class imbalance: 'china' has 6 training images, 'flower' 2 (3.0x)" in out
    [run] = list(cli.runs.iterdir())
    d = json.loads((run / "results.json").read_text())["data"]
    assert d["splits"]["train"] == {"china": 6, "flower": 2} and d["files"]["width"] == [350, 400]
    assert d["skipped"][0]["file"].endswith("broken.jpg") and d["files"]["resize"] == "shorter"


def test_image_keys_are_refused_for_fixed_size_sources_and_cache_dir_null_writes_nothing(tmp_path, photos, monkeypatch):
    from cnnlab import recipe as rc
    from cnnlab.data import ImageDataModule
    from cnnlab.recipe import RecipeError

    with pytest.raises(RecipeError, match=r"data.resize \(--set\): applies to image files \(source imagefolder\)"):
        rc.load(None, ["data.resize=longer"])
    with pytest.raises(RecipeError, match=r"data.channels \(--set\): applies to image files"):
        rc.load(None, ["data.channels=1"])
    for split in ("train", "test"):
        for c in range(2):
            (tmp_path / split / str(c)).mkdir(parents=True)
            photos[c].resize((40, 30)).save(tmp_path / split / str(c) / "0.jpg")
    monkeypatch.chdir(tmp_path)
    r = rc.load(None, ["data.source=imagefolder", f"data.root={tmp_path}", "data.image_size=8", "data.channels=1",
                       "data.resize=stretch", "data.cache_dir=null", "data.val_split=0"])
    dm = ImageDataModule(r.data)
    dm.setup()
    assert dm.train.images.shape == (2, 1, 8, 8) and not (tmp_path / ".cache").exists()
