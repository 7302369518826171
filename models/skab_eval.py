#!/usr/bin/env python3
"""The SKAB benchmark protocol, end to end through the training recipe and `tidegate replay`.

For each of the 34 labeled files (valve1, valve2, other): train a model on rows 0-399 with
`train.py`, score rows 400 onward with `tidegate replay` (the daemon's own window and
inference code), one 0/1 alarm per row, and sum TP/FP/FN/TN over all files.
F1 = TP / (TP + (FP+FN)/2), FAR = FP/(FP+TN), MAR = FN/(FN+TP). No tolerance window.

SKAB is GPL-3.0 licensed: it is read from where it lies, never copied into the project.

    python3 models/skab_eval.py ../shared/datasets/skab --tidegate target/release/tidegate
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

CHANNELS = [
    "Accelerometer1RMS",
    "Accelerometer2RMS",
    "Current",
    "Pressure",
    "Temperature",
    "Thermocouple",
    "Voltage",
    "Volume Flow RateRMS",
]


def labeled_files(root):
    for folder in ("valve1", "valve2", "other"):
        path = os.path.join(root, folder)
        for name in sorted(os.listdir(path), key=lambda n: int(n.split(".")[0])):
            if name.endswith(".csv"):
                yield os.path.join(path, name)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("skab", help="the SKAB data folder (with valve1/, valve2/, other/)")
    p.add_argument("--tidegate", default="target/release/tidegate")
    p.add_argument("--window", type=int, default=10)
    p.add_argument("--components", default="0.9")
    p.add_argument("--quantile", default="0.99")
    p.add_argument("--margin", default="2.5")
    p.add_argument("--train-rows", type=int, default=400)
    args = p.parse_args()
    here = os.path.dirname(os.path.abspath(__file__))
    total = {"tp": 0, "fp": 0, "fn": 0, "tn": 0}
    files = list(labeled_files(args.skab))
    with tempfile.TemporaryDirectory() as tmp:
        for path in files:
            model = os.path.join(tmp, "model.onnx")
            metrics = os.path.join(tmp, "metrics.json")
            subprocess.run(
                [sys.executable, os.path.join(here, "train.py"), path, "--sep", ";",
                 "--columns", ",".join(CHANNELS), "--window", str(args.window),
                 "--rows", f"0:{args.train_rows}", "--components", args.components,
                 "--quantile", args.quantile, "--margin", args.margin,
                 "--name", "skab", "--out", model],
                check=True, stderr=subprocess.DEVNULL,
            )
            subprocess.run(
                [args.tidegate, "replay", path, "--model", model, "--sep", ";",
                 "--timestamp-column", "datetime", "--label-column", "anomaly",
                 "--score-from", str(args.train_rows), "--out", os.devnull, "--metrics-json", metrics],
                check=True, stderr=subprocess.DEVNULL,
            )
            with open(metrics) as f:
                m = json.load(f)
            for k in total:
                total[k] += m[k]
            rel = os.path.relpath(path, args.skab)
            print(f"{rel:<16} F1 {m['f1']:.3f}  FAR {m['far']*100:5.1f}%  MAR {m['mar']*100:5.1f}%", file=sys.stderr)
    tp, fp, fn, tn = total["tp"], total["fp"], total["fn"], total["tn"]
    f1 = tp / (tp + (fp + fn) / 2) if tp + fp + fn else 0.0
    far = fp / (fp + tn) if fp + tn else 0.0
    mar = fn / (fn + tp) if fn + tp else 0.0
    print(
        f"SKAB, {len(files)} files, window {args.window}, components {args.components}, "
        f"threshold q{args.quantile} x{args.margin}: F1 {f1:.3f}  FAR {far*100:.2f}%  MAR {mar*100:.2f}%  "
        f"(TP {tp} FP {fp} FN {fn} TN {tn})"
    )


if __name__ == "__main__":
    main()
