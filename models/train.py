#!/usr/bin/env python3
"""Train tidegate's reference anomaly detector on normal operation and export it as ONNX.

The detector is PCA on windows of multichannel sensor data: a window of W rows x C
channels, normalised per channel, is projected on the principal components of normal
operation; the score combines the squared reconstruction error (Q, or SPE) and the
Mahalanobis distance inside the retained subspace (Hotelling's T^2), each divided by its
own scale on the training data. Windows unlike normal operation score high.

The exported model takes `window` float32 [N, W, C] (already normalised with the mean
and std in its metadata) and returns `score` float32 [N]. It carries its own contract in
ONNX metadata_props, which tidegate reads and checks against its config:

    tidegate.contract   "1"
    tidegate.name       model name
    tidegate.version    model version
    tidegate.channels   comma-separated input channel names, in order
    tidegate.window     W, rows per window
    tidegate.mean       JSON list of C per-channel means (raw units)
    tidegate.std        JSON list of C per-channel standard deviations
    tidegate.threshold  score above which a window is anomalous
    tidegate.score      "output:score" (the named output is the score)

Usage:
    python3 models/train.py normal.csv --columns a,b,c --window 10 --out model.onnx \
        [--rows 0:5000] [--group device] [--components 0.95] [--quantile 0.995] \
        [--parity parity.json]
"""
import argparse
import csv
import json
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def read_csv(path, columns, rows, group, sep):
    with open(path, newline="") as f:
        reader = csv.DictReader(f, delimiter=sep)
        missing = [c for c in columns + ([group] if group else []) if c not in (reader.fieldnames or [])]
        if missing:
            sys.exit(f"{path}: no column(s) {missing}; columns are {reader.fieldnames}")
        data = list(reader)
    start, end = rows
    data = data[start:end]
    series = {}
    for row in data:
        key = row[group] if group else ""
        try:
            series.setdefault(key, []).append([float(row[c]) for c in columns])
        except ValueError:
            continue  # a row with a missing value is left out
    return {k: np.asarray(v, dtype=np.float64) for k, v in series.items()}


def windows(values, window, stride=1):
    if len(values) < window:
        return np.empty((0, window, values.shape[1]))
    idx = np.arange(0, len(values) - window + 1, stride)
    return np.stack([values[i : i + window] for i in idx])


class Detector:
    def __init__(self, mean, std, components, eigenvalues, q_scale, t2_scale):
        self.mean, self.std = mean, std
        self.components = components  # D x k
        self.eigenvalues = eigenvalues  # k
        self.q_scale, self.t2_scale = q_scale, t2_scale

    def score(self, normalised):
        """Scores of windows already normalised, shape [N, W, C]."""
        x = normalised.reshape(len(normalised), -1)
        t = x @ self.components
        recon = t @ self.components.T
        q = ((x - recon) ** 2).mean(axis=1)
        t2 = ((t**2) / self.eigenvalues).sum(axis=1) / len(self.eigenvalues)
        return q / self.q_scale + t2 / self.t2_scale


def fit(win, variance, mean, std):
    x = ((win - mean) / std).reshape(len(win), -1)
    centre = x.mean(axis=0)
    # Centering is already done per channel; the per-position residual is small and is
    # left in: it keeps the model a pure projection.
    _, s, vt = np.linalg.svd(x - centre, full_matrices=False)
    eigen = (s**2) / max(len(x) - 1, 1)
    share = np.cumsum(eigen) / eigen.sum()
    k = int(np.searchsorted(share, variance) + 1) if variance < 1 else int(variance)
    k = max(1, min(k, x.shape[1] - 1))
    comps = vt[:k].T
    det = Detector(mean, std, comps, np.maximum(eigen[:k], 1e-9), 1.0, 1.0)
    t = x @ comps
    q = ((x - t @ comps.T) ** 2).mean(axis=1)
    t2 = ((t**2) / det.eigenvalues).sum(axis=1) / k
    det.q_scale = float(np.median(q)) or 1e-9
    det.t2_scale = float(np.median(t2)) or 1e-9
    return det


def export(det, columns, window, threshold, name, version, out):
    c = len(columns)
    d = window * c
    k = det.components.shape[1]
    # The score is a sum of squares of one linear map of the window, so the model is one
    # matrix product: with r = x (I - P Pᵀ) the residual and t = x P the scores,
    #   Q / q_scale   = Σ r² / (d q_scale)        = ‖x (I - P Pᵀ) a‖²,  a = 1/√(d q_scale)
    #   T² / t2_scale = Σ t² / (λ k t2_scale)     = ‖x P diag(b)‖²,     b = 1/√(λ k t2_scale)
    # so score = ‖x M‖² with M = [(I - P Pᵀ) a | P diag(b)], d × (d + k). Besides the
    # Reshape, three operators instead of nine: a gateway pays each operator's fixed cost
    # on every run, which at a few windows per run is most of the time a run takes. M is
    # built in float64.
    comps = det.components.astype(np.float64)
    a = 1.0 / np.sqrt(d * det.q_scale)
    b = 1.0 / np.sqrt(det.eigenvalues * k * det.t2_scale)
    residual_map = (np.eye(d) - comps @ comps.T) * a
    m = np.hstack([residual_map, comps * b]).astype(np.float32)
    nodes = [
        helper.make_node("Reshape", ["window", "flat_shape"], ["x"]),
        helper.make_node("MatMul", ["x", "M"], ["y"]),
        helper.make_node("Mul", ["y", "y"], ["y_sq"]),
        helper.make_node("ReduceSum", ["y_sq", "sum_axes"], ["score"], keepdims=0),
    ]
    inits = [
        numpy_helper.from_array(np.array([-1, d], dtype=np.int64), "flat_shape"),
        numpy_helper.from_array(m, "M"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "sum_axes"),
    ]
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("window", TensorProto.FLOAT, ["N", window, c])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="tidegate-train")
    model.ir_version = 8
    meta = {
        "tidegate.contract": "1",
        "tidegate.name": name,
        "tidegate.version": version,
        "tidegate.channels": ",".join(columns),
        "tidegate.window": str(window),
        "tidegate.mean": json.dumps([float(v) for v in det.mean]),
        "tidegate.std": json.dumps([float(v) for v in det.std]),
        "tidegate.threshold": repr(float(threshold)),
        "tidegate.score": "output:score",
    }
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    onnx.save(model, out)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("csv")
    p.add_argument("--columns", required=True, help="comma-separated channel columns, in model order")
    p.add_argument("--window", type=int, default=10)
    p.add_argument("--rows", default=":", help="rows to train on, as START:END (python slice)")
    p.add_argument("--group", help="column naming the device: windows never span two devices")
    p.add_argument("--sep", default=",")
    p.add_argument("--components", type=float, default=0.95, help="variance share to keep (<1) or a count")
    p.add_argument("--quantile", type=float, default=0.995, help="threshold: this quantile of training scores ...")
    p.add_argument("--margin", type=float, default=1.2, help="... times this margin")
    p.add_argument("--name", default="pca-window")
    p.add_argument("--version", default="1")
    p.add_argument("--out", required=True)
    p.add_argument("--parity", help="also write inputs and onnxruntime scores for a parity test")
    args = p.parse_args()

    columns = [c.strip() for c in args.columns.split(",") if c.strip()]
    start, _, end = args.rows.partition(":")
    rows = (int(start) if start else None, int(end) if end else None)
    series = read_csv(args.csv, columns, rows, args.group, args.sep)
    allrows = np.concatenate(list(series.values()))
    mean = allrows.mean(axis=0)
    std = allrows.std(axis=0)
    std[std < 1e-9] = 1.0
    win = np.concatenate([windows(v, args.window) for v in series.values() if len(v) >= args.window])
    if len(win) < 2:
        sys.exit("not enough rows for even two windows")
    det = fit(win, args.components, mean, std)
    scores = det.score((win - mean) / std)
    threshold = float(np.quantile(scores, args.quantile) * args.margin)
    export(det, columns, args.window, threshold, args.name, args.version, args.out)
    print(
        f"{args.out}: {len(win)} windows of {args.window}x{len(columns)}, {det.components.shape[1]} components, "
        f"threshold {threshold:.4f} (training scores median {np.median(scores):.3f}, max {scores.max():.3f})",
        file=sys.stderr,
    )

    if args.parity:
        import onnxruntime as ort

        rng = np.random.default_rng(0)
        pick = win[rng.choice(len(win), size=min(16, len(win)), replace=False)]
        # Some anomalous windows too: scaled and shifted copies.
        odd = pick[:4] * np.array([1.0, 1.0, 1.3, 3.0, 1.1][: len(columns)] + [1.0] * max(0, len(columns) - 5))
        raw = np.concatenate([pick, odd]).astype(np.float32)
        normalised = ((raw - mean.astype(np.float32)) / std.astype(np.float32)).astype(np.float32)
        session = ort.InferenceSession(args.out, providers=["CPUExecutionProvider"])
        ort_scores = session.run(["score"], {"window": normalised})[0]
        with open(args.parity, "w") as f:
            json.dump({"raw_windows": raw.tolist(), "scores": ort_scores.astype(float).tolist()}, f)
        print(f"{args.parity}: {len(raw)} windows with onnxruntime scores", file=sys.stderr)


if __name__ == "__main__":
    main()
