"""Built-in, TemplateFlow and user atlases."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from brainfm.atlases import (
    ATLAS_DIR,
    Atlas,
    brain_mask_file,
    custom_atlas,
    get_atlas,
    list_atlases,
    roi_names,
)
from brainfm.errors import InputError, UsageError

EXPECTED = {
    "CC200": ("CC200", 200, (63, 75, 61)),
    "Schaefer2018-200": ("Schaefer200", 200, (91, 109, 91)),
    "Schaefer2018-400": ("Schaefer400", 400, (91, 109, 91)),
    "Schaefer2018-1000": ("Schaefer1000", 1000, (91, 109, 91)),
}


@pytest.fixture(autouse=True)
def _no_templateflow(tmp_path_factory, monkeypatch):
    """Point TEMPLATEFLOW_HOME at an empty folder so a developer's cache cannot interfere."""
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(tmp_path_factory.mktemp("tf_empty")))


def test_list_atlases():
    assert list_atlases() == list(EXPECTED)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_bundled_atlas_matches_its_table(name):
    atlas = get_atlas(name)
    label, n_rois, shape = EXPECTED[name]
    assert isinstance(atlas, Atlas)
    assert (atlas.name, atlas.label, atlas.space, atlas.source) == (
        name, label, "MNI152NLin6Asym", "bundled")
    assert atlas.image.is_file() and atlas.image.parent == ATLAS_DIR
    assert atlas.licence_file is not None and atlas.licence_file.is_file()
    assert atlas.citation
    assert len(atlas.labels) == n_rois
    assert atlas.labels["index"].tolist() == list(range(1, n_rois + 1))
    assert atlas.labels["name"].is_unique
    img = nib.load(atlas.image)
    assert img.shape == shape
    values = set(np.unique(np.asanyarray(img.dataobj)).tolist()) - {0}
    assert values == set(atlas.labels["index"])


def test_names_and_networks():
    assert roi_names("CC200")[:2] == ["CC200_001", "CC200_002"]
    assert roi_names("CC200")[-1] == "CC200_200"
    labels = get_atlas("Schaefer2018-400").labels
    assert list(labels.columns) == ["index", "name", "network"]
    assert labels.loc[0, "name"] == "7Networks_LH_Vis_1"
    assert set(labels["network"]) == {"Vis", "SomMot", "DorsAttn", "SalVentAttn", "Limbic",
                                      "Cont", "Default"}
    assert "network" not in get_atlas("CC200").labels.columns


@pytest.mark.parametrize("alias,name", [("schaefer200", "Schaefer2018-200"),
                                        ("SCHAEFER400", "Schaefer2018-400"),
                                        ("Schaefer1000", "Schaefer2018-1000"),
                                        ("cc200", "CC200"),
                                        ("schaefer2018-400", "Schaefer2018-400")])
def test_aliases_are_case_insensitive(alias, name):
    assert get_atlas(alias).name == name


def test_unknown_atlas_lists_valid_names():
    with pytest.raises(UsageError) as err:
        get_atlas("AAL")
    assert err.value.exit_code == 64
    for name in list_atlases():
        assert name in str(err.value)


def test_templateflow_copy_is_preferred_only_when_non_empty(tmp_path, monkeypatch):
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(tmp_path))
    bundled = get_atlas("Schaefer2018-200").image
    target = tmp_path / "tpl-MNI152NLin6Asym" / bundled.name
    target.parent.mkdir()
    target.touch()  # TemplateFlow's offline skeleton: a 0-byte placeholder
    assert get_atlas("Schaefer200").source == "bundled"
    shutil.copyfile(bundled, target)
    atlas = get_atlas("Schaefer200")
    assert atlas.source == "templateflow" and atlas.image == target
    assert get_atlas("CC200").source == "bundled"  # CC200 is not in TemplateFlow


def test_licence_files_and_brain_mask():
    for name in ("LICENSE-CC200.txt", "LICENSE-Schaefer2018.txt", "LICENSE-MNI152.txt",
                 "README.md"):
        assert (ATLAS_DIR / name).stat().st_size > 200
    assert "MIT" in (ATLAS_DIR / "LICENSE-Schaefer2018.txt").read_text()
    assert "Apache License" in (ATLAS_DIR / "LICENSE-Schaefer2018.txt").read_text()
    mask = nib.load(brain_mask_file())
    assert mask.shape == (91, 109, 91)


def _write_user_atlas(folder: Path, data: np.ndarray, rows: dict) -> tuple[Path, Path]:
    image = folder / "toy_dseg.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([3.0, 3.0, 3.0, 1.0])), image)
    table = folder / "toy_dseg.tsv"
    pd.DataFrame(rows).to_csv(table, sep="\t", index=False)
    return image, table


def test_custom_atlas(tmp_path):
    data = np.zeros((4, 4, 4), dtype=np.int16)
    data[:2] = 1
    data[2:] = 7
    image, table = _write_user_atlas(tmp_path, data, {"index": [1, 7], "name": ["a", "b"]})
    atlas = custom_atlas(image, table, "Toy2")
    assert (atlas.name, atlas.label, atlas.source, atlas.licence_file) == (
        "Toy2", "Toy2", "user", None)
    assert atlas.labels["name"].tolist() == ["a", "b"]
    # float storage of integer values is accepted
    image_f, _ = _write_user_atlas(tmp_path, data.astype(np.float32),
                                   {"index": [1, 7], "name": ["a", "b"]})
    assert custom_atlas(image_f, table, "Toy").labels["index"].tolist() == [1, 7]


def test_custom_atlas_errors(tmp_path):
    data = np.zeros((4, 4, 4), dtype=np.int16)
    data[:2] = 1
    data[2:] = 2
    image, table = _write_user_atlas(tmp_path, data, {"index": [1, 2], "name": ["a", "b"]})
    with pytest.raises(UsageError, match="letters and digits"):
        custom_atlas(image, table, "my-atlas")
    with pytest.raises(UsageError, match="built-in"):
        custom_atlas(image, table, "CC200")
    with pytest.raises(InputError, match="does not exist"):
        custom_atlas(tmp_path / "missing.nii.gz", table, "Toy")
    # labels disagree
    bad_table = tmp_path / "bad.tsv"
    pd.DataFrame({"index": [1, 3], "name": ["a", "c"]}).to_csv(bad_table, sep="\t",
                                                               index=False)
    with pytest.raises(InputError, match=r"image but not in the table: \[2\]") as err:
        custom_atlas(image, bad_table, "Toy")
    assert err.value.exit_code == 66 and "bad.tsv" in str(err.value)
    # missing column
    pd.DataFrame({"label": [1, 2], "name": ["a", "b"]}).to_csv(bad_table, sep="\t",
                                                               index=False)
    with pytest.raises(InputError, match="lacks column"):
        custom_atlas(image, bad_table, "Toy")
    # 4-D image
    img4 = tmp_path / "four_d.nii.gz"
    nib.save(nib.Nifti1Image(np.stack([data, data], axis=-1), np.eye(4)), img4)
    with pytest.raises(InputError, match="3-D label image"):
        custom_atlas(img4, table, "Toy")
    # non-integer values
    imgf = tmp_path / "prob.nii.gz"
    nib.save(nib.Nifti1Image(data.astype(np.float32) * 0.5, np.eye(4)), imgf)
    with pytest.raises(InputError, match="non-integer"):
        custom_atlas(imgf, table, "Toy")
