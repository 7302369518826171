#!/usr/bin/env bash
# Rebuilds the bundled demo model and its parity fixture, exactly as committed.
#   pip install -r models/requirements.txt && bash models/build_demo_model.sh
set -euo pipefail
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# Normal operation of 40 pumps (varied operating points), 1500 steps each.
python3 simulate_pumps.py --pumps 40 --steps 1500 --fault-chance 0 --seed 3 > "$tmp/normal.csv"
python3 train.py "$tmp/normal.csv" \
  --columns flow_m3h,pressure_bar,temperature_c,vibration_mm_s,current_a \
  --window 10 --group device --name pump-demo --version 1 --margin 1.5 \
  --out pump-demo.onnx --parity parity/pump-demo.json
