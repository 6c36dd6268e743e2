"""Scans as they arrive: DICOM series, NRRD and MetaImage through MONAI's ITK reader, and cases of
one file per channel. Each predicts on its own grid, with its geometry, the labels of the same
voxels given as NIfTI.

The files are written here by the libraries that own the formats (ITK for NRRD/MetaImage, pydicom
for a DICOM series with a non-axial orientation), around a narrow QT-UNet-T run folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import zoo
from zoo.cli import main

itk = pytest.importorskip("itk")

PREP = {"orientation": "RAS", "spacing_mm": [1.5, 1.5, 1.5], "intensity_transform": "zscore"}


def _run(tmp_path: Path, in_chans: int = 1) -> Path:
    args = {
        "embed_dim": 12,
        "window_size": 2,
        "img_size": [32, 32, 32],
        "in_chans": in_chans,
        "num_classes": 3,
    }
    torch.manual_seed(3)
    model = zoo.create("qtunet-t", **{k: tuple(v) if isinstance(v, list) else v for k, v in args.items()})
    run = tmp_path / f"run{in_chans}"
    run.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(run / "model.safetensors"))
    cfg = {"model_name": "qtunet-t", "model_args": args, "preprocessing": PREP, "finetune": {"preset": "t"}}
    cfg["sliding_window"] = {"roi_size": [32, 32, 32], "overlap": 0.25}
    (run / "config.json").write_text(json.dumps(cfg))
    return run


def _oblique() -> np.ndarray:
    q, _ = np.linalg.qr(np.array([[0.9, -0.2, 0.1], [0.2, 0.9, 0.3], [0.0, -0.3, 0.95]]))
    return q * np.sign(np.diag(q))  # a proper rotation, near the identity: not axial


def _volume() -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.normal(100, 30, (30, 28, 24))).astype(np.float32)  # ITK order (z, y, x)


def _itk_file(path: Path, data: np.ndarray) -> Path:
    img = itk.image_from_array(data)
    img.SetSpacing([1.2, 0.9, 1.6])
    img.SetOrigin([12.0, -7.5, 3.25])
    img.SetDirection(itk.matrix_from_array(_oblique()))
    itk.imwrite(img, str(path))
    return path


def _as_nifti(scan: Path, out: Path) -> Path:
    """The same voxels and RAS geometry as MONAI's ITK reader sees them, as a NIfTI file (NIfTI-2:
    its affine is stored in float64, so the grid is the same to the last bit)."""
    from monai.transforms import LoadImage

    arr, meta = LoadImage(reader="ITKReader", image_only=False)(str(scan))
    nib.save(nib.Nifti2Image(np.asarray(arr, np.float32), np.asarray(meta["affine"])), out)
    return out


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_nrrd_and_metaimage_predict_in_their_format_on_their_grid(tmp_path, capsys, suffix):
    run = _run(tmp_path)
    scan = _itk_file(tmp_path / f"scan{suffix}", _volume())
    out = tmp_path / f"seg{suffix}"
    assert main(["predict", str(run), "-i", str(scan), "-o", str(out), "-q"]) == 0
    src, seg = itk.imread(str(scan)), itk.imread(str(out))
    np.testing.assert_allclose(np.asarray(seg.GetSpacing()), np.asarray(src.GetSpacing()), atol=1e-5)
    np.testing.assert_allclose(np.asarray(seg.GetOrigin()), np.asarray(src.GetOrigin()), atol=1e-4)
    direction = itk.array_from_matrix(seg.GetDirection())
    np.testing.assert_allclose(direction, itk.array_from_matrix(src.GetDirection()), atol=1e-5)
    assert not np.allclose(direction, np.eye(3), atol=1e-2)  # the non-identity direction survived
    labels = itk.array_from_image(seg)
    assert labels.shape == _volume().shape and len(np.unique(labels)) > 1
    # The same voxels given as NIfTI give the same labels.
    ref = tmp_path / "ref.nii.gz"
    assert main(["predict", str(run), "-i", str(_as_nifti(scan, tmp_path / "s.nii.gz")), "-o", str(ref)]) == 0
    want = np.asarray(nib.load(ref).dataobj)  # (x, y, z)
    np.testing.assert_array_equal(labels, np.transpose(want, (2, 1, 0)))


def _dicom_series(folder: Path, data: np.ndarray) -> Path:
    """A CT series of ``data`` (z, y, x) with an oblique, non-axial orientation, written by pydicom."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir()
    rot = _oblique()
    row, col, normal = rot[:, 0], rot[:, 1], rot[:, 2]  # LPS directions
    spacing, thickness, origin = (0.9, 1.2), 1.6, np.array([12.0, -7.5, 3.25])
    series, study, frame = generate_uid(), generate_uid(), generate_uid()
    pixels = np.round(data).astype(np.int16)
    for k in range(pixels.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.PatientID, ds.PatientName = "CT", "ANON", "Anonymous"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.InstanceNumber = k + 1
        ds.ImageOrientationPatient = [float(v) for v in (*row, *col)]
        ds.ImagePositionPatient = [float(v) for v in origin + k * thickness * normal]
        ds.PixelSpacing = [spacing[0], spacing[1]]
        ds.SliceThickness = thickness
        ds.Rows, ds.Columns = pixels.shape[1], pixels.shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = pixels[k].tobytes()
        ds.save_as(folder / f"slice{k:03d}.dcm", enforce_file_format=True)
    return folder


def test_a_non_axial_dicom_series_predicts_on_its_grid(tmp_path, capsys):
    run = _run(tmp_path)
    series = _dicom_series(tmp_path / "series", _volume())
    out = tmp_path / "seg.nii.gz"
    assert main(["predict", str(run), "-i", str(series), "-o", str(out), "-q"]) == 0
    seg = nib.load(out)
    from monai.transforms import LoadImage

    arr, meta = LoadImage(reader="ITKReader", image_only=False)(str(series))
    assert seg.shape == tuple(arr.shape)  # the series' own grid
    np.testing.assert_allclose(seg.affine, np.asarray(meta["affine"]), atol=1e-4)
    assert abs(seg.affine[0, 1]) > 1e-3  # oblique: the geometry is not axial
    ref = tmp_path / "ref.nii.gz"
    assert (
        main(["predict", str(run), "-i", str(_as_nifti(series, tmp_path / "s.nii.gz")), "-o", str(ref)]) == 0
    )
    np.testing.assert_array_equal(np.asarray(seg.dataobj), np.asarray(nib.load(ref).dataobj))


def test_a_case_of_one_file_per_channel_is_stacked_in_order_and_grids_are_checked(tmp_path, capsys):
    run = _run(tmp_path, in_chans=4)
    rng = np.random.default_rng(1)
    affine = np.diag([1.1, 1.0, 1.3, 1.0])
    chans = [rng.normal(50 * (i + 1), 10, (40, 36, 30)).astype(np.float32) for i in range(4)]
    files = []
    for name, data in zip(("t1", "t1ce", "t2", "flair"), chans, strict=True):
        files.append(tmp_path / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(data, affine), files[-1])
    stacked = tmp_path / "stacked.nii.gz"
    nib.save(nib.Nifti1Image(np.stack(chans, axis=-1), affine), stacked)
    out, ref = tmp_path / "seg.nii.gz", tmp_path / "ref.nii.gz"
    assert main(["predict", str(run), "-i", *map(str, files), "-o", str(out), "-q"]) == 0
    assert main(["predict", str(run), "-i", str(stacked), "-o", str(ref), "-q"]) == 0
    np.testing.assert_array_equal(np.asarray(nib.load(out).dataobj), np.asarray(nib.load(ref).dataobj))
    swapped = [files[1], files[0], *files[2:]]  # the order given is the channel order
    assert main(["predict", str(run), "-i", *map(str, swapped), "-o", str(tmp_path / "sw.nii.gz"), "-q"]) == 0
    assert not np.array_equal(
        np.asarray(nib.load(tmp_path / "sw.nii.gz").dataobj), np.asarray(nib.load(out).dataobj)
    )
    nib.save(nib.Nifti1Image(chans[2], np.diag([1.1, 1.0, 1.6, 1.0])), files[2])  # another grid
    capsys.readouterr()
    assert main(["predict", str(run), "-i", *map(str, files), "-o", str(tmp_path / "x.nii.gz")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "t2.nii.gz: not on the grid of t1.nii.gz" in err, err


def test_nrrd_scans_and_labels_finetune(tmp_path):
    from zoo.finetune import FinetuneOptions, finetune

    rng = np.random.default_rng(2)
    entries = []
    for i in range(3):
        vol = rng.normal(100, 20, (32, 32, 32)).astype(np.float32)
        lab = np.zeros((32, 32, 32), np.uint8)
        lab[8:20, 10:22, 6 + i : 18 + i] = 1
        vol[lab == 1] += 80
        entries.append(
            {
                "image": _itk_file(tmp_path / f"img{i}.nrrd", vol).name,
                "label": _itk_file(tmp_path / f"lab{i}.mha", lab).name,
            }
        )
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"training": entries[:2], "validation": entries[2:]}))
    options = FinetuneOptions(
        preset="default", steps=2, roi_size=(32, 32, 32), batch_size=1, num_samples=1, val_every=2,
        spacing_mm=(2.0, 2.0, 2.0), progress=False, model_kwargs={"feature_chns": (4, 8, 16, 32, 64)},
    )  # fmt: skip
    r = finetune("fmunet", datalist, tmp_path / "run", options, print_fn=lambda _m: None)
    assert r.steps == 2 and r.settings.num_classes == 2 and "dice_1" in r.metrics


def test_header_shapes_are_the_loaded_shapes_without_reading_a_voxel(tmp_path):
    from zoo.imageio import header_shape, load_image

    nrrd = _itk_file(tmp_path / "scan.nrrd", _volume())
    mha = _itk_file(tmp_path / "scan.mha", _volume())
    series = _dicom_series(tmp_path / "series", _volume()[:6])
    nii = [_as_nifti(nrrd, tmp_path / f"c{i}.nii") for i in range(2)]
    for scan in (nrrd, mha, series, nii):
        assert header_shape(scan) == tuple(load_image(scan).shape), scan
    assert header_shape(nrrd) == (24, 28, 30)  # ITK's (x, y, z) of a (z, y, x) array


def test_a_header_announcing_more_voxels_than_the_budget_is_refused_before_any_read(tmp_path, capsys):
    import time

    run = _run(tmp_path)
    (tmp_path / "tiny.raw").write_bytes(b"\0" * 64)
    huge = tmp_path / "huge.nhdr"  # a detached NRRD header: 4000³ float voxels (238 GB) over 64 bytes
    huge.write_text(
        "NRRD0004\ntype: float\ndimension: 3\nsizes: 4000 4000 4000\nencoding: raw\n"
        "endian: little\nspace dimension: 3\nspace directions: (1,0,0) (0,1,0) (0,0,1)\n"
        "space origin: (0,0,0)\ndata file: tiny.raw\n"
    )
    out = tmp_path / "labels.nrrd"
    start = time.monotonic()
    assert main(["predict", str(run), "-i", str(huge), "-o", str(out)]) != 0
    assert time.monotonic() - start < 20
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "huge.nhdr: its header announces 64,000,000,000 voxels (238.4 GB as float32)" in err
    assert "not read" in err and not out.exists()


def test_a_case_of_files_over_the_budget_is_refused_before_they_are_stacked(tmp_path, monkeypatch):
    from zoo.imageio import load_image

    files = [
        _as_nifti(_itk_file(tmp_path / f"c{i}.nrrd", _volume()), tmp_path / f"c{i}.nii") for i in range(4)
    ]
    monkeypatch.setenv("MEDZOO_PREDICT_MAX_GB", str(3.5 * 24 * 28 * 30 * 4 / 2**30))  # 3.5 of the 4 channels
    with pytest.raises(
        ValueError, match=r"c0.nii and the rest of the case: their headers announce 80,640 voxels"
    ):
        load_image(files)
    monkeypatch.setenv("MEDZOO_PREDICT_MAX_GB", str(4 * 24 * 28 * 30 * 4 / 2**30))
    assert load_image(files).shape == (24, 28, 30, 4)
