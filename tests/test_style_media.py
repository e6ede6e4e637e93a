"""Untrusted media for stage 2 (issue 14, item 6), made on the spot:
- style images: 16-bit (I;16, I;16B, I), float, palette with transparency, LA/RGBA, RGB with a transparent color and
  CMYK pictures become the right 8-bit RGB (scaled, not clipped; transparency composited on white); a side over
  MAX_IMAGE_SIDE, a 30000x30000 header and a 12000x12000 one are refused with the file's name before decoding, and no
  DecompressionBombError/Warning escapes; a folder with such a file fails before any model work;
- style embeddings: NaN/inf rows, wrong widths, no rows, too many, unequal counts, a token that is a vocabulary word
  (`the`, `The`, a special token) or that another file or tool added are refused in one line naming the file, and the
  pipeline is left untouched; the same file loads twice, and after the training that wrote it."""
import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from dreamframe import embedding, models
from dreamframe.schema import sample_movie
from dreamframe.style import STYLE_TEMPLATES, StyleConfig, train_style
from dreamframe.style_files import BACKGROUND, MAX_IMAGE_SIDE, load_style_images, open_style_image
from dreamframe.testing import tiny_sdxl


@pytest.fixture(autouse=True)
def warnings_are_errors():
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def _png_header(path, width, height):
    "A PNG that claims `width` x `height` RGB pixels and holds none: what a decompression bomb's header looks like."
    def chunk(kind, data): return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return path


GRADIENT = np.tile(np.linspace(0, 65535, 64), (64, 1))  # 0 ... 65535 left to right


@pytest.mark.parametrize("name, make", [
    ("gray16.png", lambda: Image.fromarray(GRADIENT.astype(np.uint16))),                 # I;16
    ("gray16be.tif", lambda: Image.fromarray(GRADIENT.astype(">u2"))),                 # I;16B
    ("int32.tif", lambda: Image.fromarray(GRADIENT.astype(np.int32))),                  # I
    ("float.tif", lambda: Image.fromarray((GRADIENT / 65535).astype(np.float32)))])     # F, 0..1
def test_deep_images_are_scaled_not_clipped(tmp_path, name, make):
    make().save(tmp_path / name)
    pixels = np.asarray(open_style_image(tmp_path / name)).astype(int)
    expected = np.round(GRADIENT / 65535 * 255)
    assert pixels.shape == (64, 64, 3) and np.abs(pixels[..., 0] - expected).max() <= 1
    assert (pixels == 255).mean() < 0.05  # the old conversion turned 99% of a 16-bit picture white


def test_transparency_is_composited_on_the_background(tmp_path):
    palette = Image.new("P", (64, 64), 0); palette.putpalette([0, 0, 0, 255, 0, 0]); palette.paste(1, (32, 0, 64, 64))
    palette.save(tmp_path / "palette.png", transparency=0)  # index 0 (black) transparent
    Image.new("LA", (64, 64), (0, 0)).save(tmp_path / "la.png")  # black, fully transparent
    Image.new("RGBA", (64, 64), (0, 0, 255, 128)).save(tmp_path / "rgba.png")
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "trns.png", transparency=(1, 2, 3))
    assert open_style_image(tmp_path / "palette.png").getpixel((0, 0)) == BACKGROUND
    assert open_style_image(tmp_path / "palette.png").getpixel((40, 0)) == (255, 0, 0)
    assert open_style_image(tmp_path / "la.png").getpixel((0, 0)) == BACKGROUND
    assert open_style_image(tmp_path / "rgba.png").getpixel((0, 0)) == (127, 127, 255)
    assert open_style_image(tmp_path / "trns.png").getpixel((0, 0)) == BACKGROUND


def test_cmyk_becomes_rgb(tmp_path):
    Image.new("CMYK", (64, 64), (0, 255, 255, 0)).save(tmp_path / "red.jpg")
    Image.new("CMYK", (64, 64), (0, 255, 255, 0)).save(tmp_path / "red.tif")
    for name in ("red.jpg", "red.tif"):
        red, green, blue = open_style_image(tmp_path / name).getpixel((10, 10))
        assert red > 240 and green < 15 and blue < 15, name


@pytest.mark.parametrize("name, size", [("wide.png", (MAX_IMAGE_SIDE + 1, 64)), ("bomb.png", (30000, 30000)),
                                        ("warns.png", (12000, 12000))])
def test_oversize_images_are_refused_by_name_before_decoding(tmp_path, name, size):
    if name == "wide.png": Image.new("L", size).save(tmp_path / name)
    else: _png_header(tmp_path / name, *size)
    with pytest.raises(ValueError, match=rf"style image '.*{name}' cannot be used") as error:
        open_style_image(tmp_path / name)
    assert "\n" not in str(error.value)


def test_broken_files_are_refused_by_name(tmp_path):
    Image.new("RGB", (64, 64), "red").save(tmp_path / "cut.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "cut.png").read_bytes()[:60])
    (tmp_path / "text.jpg").write_text("not a picture")
    for name in ("cut.png", "text.jpg"):
        with pytest.raises(ValueError, match=f"{name}' cannot be used"):
            open_style_image(tmp_path / name)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_sdxl(tmp_path_factory.mktemp("tiny") / "sdxl")


def test_a_folder_with_a_bomb_fails_before_any_model_work(tmp_path, tiny):
    folder = tmp_path / "mine"; folder.mkdir()
    for i in range(4): Image.fromarray(GRADIENT.astype(np.uint16)).save(folder / f"{i}.png")
    pixels = np.asarray(load_style_images(folder, 64)[0])[..., 0].astype(int)
    assert abs(pixels[:, 32].mean() - 130) <= 2  # the 16-bit mid-gray, resized and cropped
    _png_header(folder / "4.png", 30000, 30000)
    run = tmp_path / "run"; sample_movie().save(run)
    pipe = models.load_sdxl(tiny)
    vocabulary = len(pipe.tokenizer)
    with pytest.raises(ValueError, match="4.png' cannot be used"):
        train_style(StyleConfig(images_dir=str(folder), resolution=64, steps=1), pipe, run, progress=False)
    assert len(pipe.tokenizer) == vocabulary and not (run / "config.json").exists() and not (run / "style").exists()


# ---- embeddings ----

def _raw(path, token, clip_l, clip_g):
    "An embedding file as another tool could write it (save_style_embedding would refuse these)."
    save_file({"clip_l": clip_l, "clip_g": clip_g}, str(path), metadata={"token": token})
    return path


def _nan(rows, where=(0, 0)):
    rows = rows.clone(); rows[where] = float("nan"); return rows


@pytest.mark.parametrize("token, clip_l, clip_g, message", [
    ("<nan>", _nan(torch.zeros(1, 32)), torch.zeros(1, 64), "clip_l holds 1 NaN/inf value(s)"),
    ("<inf>", torch.zeros(1, 32), torch.full((1, 64), float("-inf")), "clip_g holds 64 NaN/inf value(s)"),
    ("<wide>", torch.zeros(1, 768), torch.zeros(1, 1280), "clip_l rows are 768 wide but the pipeline's text_encoder expects 32"),
    ("<narrow>", torch.zeros(1, 32), torch.zeros(1, 32), "clip_g rows are 32 wide but the pipeline's text_encoder_2 expects 64"),
    ("<none>", torch.zeros(0, 32), torch.zeros(0, 64), "has 0 vectors"),
    ("<many>", torch.zeros(76, 32), torch.zeros(76, 64), "has 76 vectors; a style token needs 1 to 75"),
    ("<odd>", torch.zeros(2, 32), torch.zeros(3, 64), "clip_l has 2 vectors but clip_g has 3"),
    ("<int>", torch.zeros(1, 32, dtype=torch.int32), torch.zeros(1, 64), "2-d float tensor"),
    ("the", torch.zeros(1, 32), torch.zeros(1, 64), "its token 'the' is a word of the pipeline's text_encoder vocabulary"),
    ("The", torch.zeros(1, 32), torch.zeros(1, 64), "its token 'The' is a word"),
    ("<|endoftext|>", torch.zeros(1, 32), torch.zeros(1, 64), "is a word of the pipeline's"),
    ("two words", torch.zeros(1, 32), torch.zeros(1, 64), "one word without spaces")])
def test_bad_embeddings_are_refused_in_one_line_and_change_nothing(tmp_path, tiny, token, clip_l, clip_g, message):
    pipe = models.load_sdxl(tiny)
    sizes = [len(pipe.tokenizer), len(pipe.tokenizer_2), pipe.text_encoder.get_input_embeddings().num_embeddings]
    path = _raw(tmp_path / "bad.safetensors", token, clip_l, clip_g)
    with pytest.raises(ValueError) as error:
        embedding.load_style(pipe, path)
    assert message in str(error.value) and str(path) in str(error.value) and "\n" not in str(error.value)
    assert sizes == [len(pipe.tokenizer), len(pipe.tokenizer_2), pipe.text_encoder.get_input_embeddings().num_embeddings]
    assert pipe.tokenizer.tokenize("the house") == ["the</w>", "house</w>"]


def test_save_refuses_what_load_would_refuse(tmp_path):
    with pytest.raises(ValueError, match="NaN/inf"):
        embedding.save_style_embedding(tmp_path / "x.safetensors", "<x>", _nan(torch.zeros(1, 32)), torch.zeros(1, 64))
    assert not (tmp_path / "x.safetensors").exists()


def test_only_the_file_that_added_a_token_may_load_it_again(tmp_path, tiny):
    pipe = models.load_sdxl(tiny)
    mine = embedding.save_style_embedding(tmp_path / "mine.safetensors", "<mine>", torch.ones(2, 32), torch.ones(2, 64))
    other = embedding.save_style_embedding(tmp_path / "other.safetensors", "<mine>", torch.zeros(2, 32), torch.zeros(2, 64))
    assert embedding.load_style(pipe, mine) == embedding.load_style(pipe, mine) == "<mine>"
    with pytest.raises(ValueError, match="already in the pipeline's text_encoder tokenizer, added for"):
        embedding.load_style(pipe, other)
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[-2:], torch.ones(2, 32))
    plain = models.load_sdxl(tiny)
    plain.load_textual_inversion(torch.ones(1, 32), token="<theirs>", text_encoder=plain.text_encoder, tokenizer=plain.tokenizer)
    theirs = embedding.save_style_embedding(tmp_path / "theirs.safetensors", "<theirs>", torch.ones(1, 32), torch.ones(1, 64))
    with pytest.raises(ValueError, match="something other than dreamframe"):
        embedding.load_style(plain, theirs)


def test_the_trained_file_loads_into_the_pipeline_that_trained_it_and_a_fresh_one(tmp_path, tiny):
    run = tmp_path / "run"; sample_movie().save(run)
    pipe = models.load_sdxl(tiny)
    path = train_style(StyleConfig(n_images=2, image_steps=1, resolution=64, steps=2, templates=list(STYLE_TEMPLATES[:2])),
                       pipe, run, progress=False)
    assert embedding.load_style(pipe, path) == embedding.load_style(models.load_sdxl(tiny), path) == "<watercolor-style>"
    before = {p: p.read_bytes() for p in [run / "config.json", *sorted((run / "style").rglob("*.*"))]}
    with pytest.raises(ValueError, match="'house' is a word of the pipeline's text_encoder vocabulary"):
        train_style(StyleConfig(token="house", n_images=2, image_steps=1, resolution=64, steps=1), models.load_sdxl(tiny),
                    run, redo=True, progress=False)
    assert before == {p: p.read_bytes() for p in [run / "config.json", *sorted((run / "style").rglob("*.*"))]}
