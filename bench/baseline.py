"""The plain way, without the platform: one process, MONAI end to end, results kept in a list.

What a user would write: MONAI ``LoadImage`` on each study's thin series, ``Orientation`` /
``ScaleIntensityRange`` / ``Spacing``, ``sliding_window_inference`` with the same detector in
PyTorch (mirrored at test time as the detector's spec says), the same candidate extraction and
classifier, everything appended to a list and written to Parquet at the end.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from monai.inferers import sliding_window_inference
from monai.transforms import EnsureChannelFirst, LoadImage

from export.checkpoint import Checkpoint
from export.dataset import thin_series_files
from export.evaluate import TorchRunner
from pipeline.analysis import AnalysisConfig, classify
from pipeline.patches import flip_averaged
from pipeline.postprocess import extract_candidates
from pipeline.preprocess import Preprocessed, lung_box, lung_region, model_transform


def run_baseline(
    study_dirs: list[Path], detector: Checkpoint, classifier: Checkpoint, out: Path
) -> dict[str, Any]:
    """Screen ``study_dirs`` the plain way; returns seconds per stage and the row count."""
    det, cls = detector.build(), classifier.build()
    runner = TorchRunner({classifier.spec.name: cls})
    load = LoadImage(reader="PydicomReader", image_only=True)
    to_cf = EnsureChannelFirst()
    transform = model_transform(detector.spec)
    spec = detector.spec
    mirrored = flip_averaged(lambda bs: [det(torch.from_numpy(b)).numpy() for b in bs], spec.test_time_flips)
    rows: list[dict[str, Any]] = []
    seconds = {"load": 0.0, "preprocess": 0.0, "inference": 0.0, "postprocess": 0.0}
    started = time.perf_counter()
    for study_dir in study_dirs:
        t0 = time.perf_counter()
        image = to_cf(load(str(Path(thin_series_files(study_dir)[0]).parent)))
        t1 = time.perf_counter()
        pre_t = transform(image)
        pre = Preprocessed(pre_t[0].numpy(), np.asarray(pre_t.affine), spec.target_spacing_mm)
        t2 = time.perf_counter()
        with torch.no_grad():
            logits = sliding_window_inference(
                torch.from_numpy(pre.array)[None, None],
                roi_size=spec.patch_size,
                sw_batch_size=4,
                predictor=lambda x: torch.from_numpy(mirrored([x.numpy()])[0]),
                overlap=spec.overlap,
                mode="gaussian",
            )
        probs = torch.sigmoid(logits)[0, 0].numpy() * lung_region(pre, spec)
        t3 = time.perf_counter()
        candidates = extract_candidates(probs, pre, spec, threshold=0.5)
        findings = classify(pre, candidates, classifier.spec, runner, AnalysisConfig(), lung_box(pre, spec))
        t4 = time.perf_counter()
        rows.extend(
            {"study": study_dir.name, "score": f.score, "diameter_mm": f.diameter_mm} for f in findings
        )
        rows.append({"study": study_dir.name, "score": None, "diameter_mm": None})
        seconds["load"] += t1 - t0
        seconds["preprocess"] += t2 - t1
        seconds["inference"] += t3 - t2
        seconds["postprocess"] += t4 - t3
    t5 = time.perf_counter()
    pq.write_table(pa.Table.from_pylist(rows), out)
    seconds["write"] = time.perf_counter() - t5
    return {"seconds": seconds, "total_s": time.perf_counter() - started, "rows": len(rows)}
