"""`badnet-prune classify` as the console script runs it (in this process: run_cli): PNG, JPEG and lab HDF5
inputs labelled by a saved network as plain Keras labels them, N ("backdoor detected") for a repaired G, the
input scale from the model's provenance file; wrong and hostile inputs end in one line naming the file or
option."""

from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import cached_quick_badnet, run_cli

CLASSES = 10


def classify(*args: str) -> tuple[int, str, str]:
    env = {**os.environ, "COLUMNS": "200"}
    result = run_cli("classify", *args, env=env, timeout=300)
    return result.returncode, result.stdout, result.stderr


def one_error_line(code: int, stderr: str) -> str:
    assert code == 2, stderr
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


@dataclass(frozen=True)
class Fixture:
    root: Path
    b: Path
    g: Path
    pngs: list[Path]
    jpeg: Path
    odd_name: Path
    data_file: Path
    b_labels: dict[str, int]  # file name -> plain Keras label of B
    g_labels: dict[str, int]
    data_b: list[int]


def plain_labels(model, images: np.ndarray) -> list[int]:
    return [int(label) for label in np.argmax(model.predict(images, verbose=0), axis=-1)]


@pytest.fixture(scope="module")
def fixture(tmp_path_factory) -> Fixture:
    from badnet_prune.files.data import open_data_file, write_data_file
    from badnet_prune.numerics.pruned_model import build_pruned_model
    from badnet_prune.numerics.repair import build_repaired_net
    from badnet_prune.numerics.tf_setup import keras

    root = cached_quick_badnet(0, CLASSES)
    work = tmp_path_factory.mktemp("classify")
    spread = [30, 100, 170, 260]  # test files are sorted by class: images of four classes
    clean = open_data_file(root / "data" / "cl" / "test.h5").read_all()[spread]
    poisoned = open_data_file(root / "data" / "bd" / "bd_test.h5").read_all()[spread]
    pixels = np.clip(np.rint(np.concatenate([clean, poisoned])), 0, 255).astype(np.uint8)
    pngs = []
    for index, image in enumerate(pixels):
        path = work / f"face {index}.png"
        Image.fromarray(image).save(path)
        pngs.append(path)
    jpeg = work / "face.jpg"
    Image.fromarray(pixels[0]).save(jpeg, quality=90)
    odd_name = work / "tab\there.png"
    Image.fromarray(pixels[1]).save(odd_name, format="PNG")
    data_file = work / "few.h5"
    write_data_file(data_file, pixels[:3].astype(np.float32), np.zeros(3, dtype=np.int64))

    b_path = root / "models" / "bd_net.h5"
    b = keras.models.load_model(b_path, compile=False)
    # B' without the backdoor's channels (synth records them): it disagrees with B on the poisoned faces
    backdoor = json.loads((root / "synth.json").read_text(encoding="utf-8"))["backdoor_channels"]
    b_prime = build_pruned_model(b, "conv_3", backdoor)
    g = build_repaired_net(b, b_prime)
    g_path = work / "models" / "G_0.04.keras"
    g_path.parent.mkdir()
    g.save(g_path)
    g_path.with_suffix(".json").write_text(json.dumps({"input_scale": 1.0, "kind": "G", "step": 60}), encoding="utf-8")

    files = [*pngs, jpeg, odd_name]
    decoded = np.stack([np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) for path in files])
    names = [str(path) for path in files]
    b_of = plain_labels(b, decoded)
    g_of = plain_labels(keras.models.load_model(g_path, compile=False), decoded)
    prime_of = plain_labels(b_prime, decoded)
    assert g_of == [bl if bl == pl else CLASSES for bl, pl in zip(b_of, prime_of, strict=True)]
    return Fixture(root, b_path, g_path, pngs, jpeg, odd_name, data_file, dict(zip(names, b_of, strict=True)),
                   dict(zip(names, g_of, strict=True)), plain_labels(b, pixels[:3].astype(np.float32)))


def parse(stdout: str) -> dict[str, int]:
    rows = [line.split("\t") for line in stdout.splitlines()]
    assert all(len(row) == 2 for row in rows), stdout
    return {name: int(label) for name, label in rows}


def test_images_and_a_data_file_get_plain_keras_labels(fixture):
    code, stdout, stderr = classify("--model", str(fixture.b), "--input-scale", "1", *map(str, fixture.pngs),
                                    str(fixture.jpeg), str(fixture.odd_name), str(fixture.data_file))
    assert code == 0, stderr
    labels = parse(stdout)
    expected = {name.replace("\t", "\\t"): label for name, label in fixture.b_labels.items()}
    expected |= {f"{fixture.data_file}[{i}]": label for i, label in enumerate(fixture.data_b)}
    assert labels == expected
    assert list(labels) == [*expected]  # in the order given, a data file's images in its order
    assert "backdoor" not in stderr  # B has no detection class


def test_a_repaired_g_answers_n_for_backdoor_detected_with_its_provenances_scale(fixture):
    code, stdout, stderr = classify("--model", str(fixture.g), *map(str, fixture.pngs))
    assert code == 0, stderr
    labels = parse(stdout)
    assert labels == {str(path): fixture.g_labels[str(path)] for path in fixture.pngs}
    assert all(0 <= label <= CLASSES for label in labels.values())
    assert CLASSES in labels.values(), "G flagged none of the poisoned images: the test shows nothing"
    flagged = sum(label == CLASSES for label in labels.values())
    assert stderr.strip() == f"label {CLASSES} means backdoor detected ({flagged} of {len(labels)} images)"


def test_json_output(fixture):
    code, stdout, stderr = classify("--model", str(fixture.g), str(fixture.pngs[0]), str(fixture.data_file), "--json")
    assert code == 0, stderr
    answer = json.loads(stdout)
    assert answer["backdoor_label"] == CLASSES and answer["input_scale"] == 1.0
    assert answer["results"][0] == {"file": str(fixture.pngs[0]), "index": None,
                                    "label": fixture.g_labels[str(fixture.pngs[0])]}
    assert [row["index"] for row in answer["results"][1:]] == [0, 1, 2]


def test_a_model_without_provenance_needs_input_scale(fixture):
    line = one_error_line(*classify("--model", str(fixture.b), str(fixture.pngs[0]))[::2])
    assert "--input-scale" in line and str(fixture.b) in line and "provenance" in line


def test_an_input_scale_contradicting_the_provenance_is_refused(fixture):
    line = one_error_line(*classify("--model", str(fixture.g), "--input-scale", "255", str(fixture.pngs[0]))[::2])
    assert "--input-scale" in line and "contradicts" in line


def test_an_image_of_another_size_is_refused_naming_it(fixture, tmp_path):
    small = tmp_path / "small.png"
    Image.new("RGB", (32, 32)).save(small)
    line = one_error_line(*classify("--model", str(fixture.g), str(fixture.pngs[0]), str(small))[::2])
    assert str(small) in line and "32x32" in line and "47x55" in line and "not resized" in line


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height (a decompression bomb's header; no real pixels follow)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = chunk(b"IDAT", zlib.compress(b"\0" * 64))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + pixels + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    "name, content, phrase",
    [
        ("notes.png", b"just text, not an image", "neither a PNG or JPEG image nor an HDF5 data file"),
        ("bomb.png", png_declaring(60000, 60000), "bomb.png"),
        ("large.png", png_declaring(10000, 10000), "not resized"),
        ("truncated.png", None, "unreadable image"),
        ("anim.gif", "gif", "neither a PNG or JPEG image"),
        ("wide.png", "16bit", "8-bit"),
    ],
)
def test_hostile_and_wrong_files_end_in_one_line_naming_them(fixture, tmp_path, name, content, phrase):
    path = tmp_path / name
    if content is None:
        path.write_bytes(fixture.pngs[0].read_bytes()[:200])
    elif content == "gif":
        Image.new("RGB", (47, 55)).save(path, format="GIF")
    elif content == "16bit":
        Image.fromarray(np.zeros((55, 47), dtype=np.uint16)).save(path)
    else:
        path.write_bytes(content)
    line = one_error_line(*classify("--model", str(fixture.g), str(path))[::2])
    assert str(path) in line and phrase in line, line


@pytest.mark.parametrize(
    "provenance, phrase",
    [
        ("{not json", "unreadable provenance file"),
        (json.dumps({"input_scale": "abc"}), "input_scale"),
        (json.dumps({"input_scale": 10}), "must be 1 or 255"),
        (json.dumps([1, 2]), "provenance"),
    ],
)
def test_a_bad_provenance_file_is_one_line_naming_it(fixture, tmp_path, provenance, phrase):
    model = tmp_path / "G_x.keras"
    model.write_bytes(fixture.g.read_bytes())
    model.with_suffix(".json").write_text(provenance, encoding="utf-8")
    line = one_error_line(*classify("--model", str(model), str(fixture.pngs[0]))[::2])
    assert str(model.with_suffix(".json")) in line and phrase in line, line


def test_missing_image_is_one_line(fixture, tmp_path):
    line = one_error_line(*classify("--model", str(fixture.g), str(tmp_path / "nope.png"))[::2])
    assert str(tmp_path / "nope.png") in line and "no such file" in line
