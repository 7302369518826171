#!/usr/bin/env python3
"""Data from the simulated pumps of `tidegate demo`, for training and testing a model.

The physics mirror `src/sources/sim.rs` (one step per second per pump). Writes a CSV with
a timestamp, the pump, its channels, and a 0/1 `anomaly` label (1 while a bearing fault
is simulated). `--fault-chance 0` gives normal operation only, for training.

    python3 models/simulate_pumps.py --pumps 4 --steps 5000 --fault-chance 0 > normal.csv
"""
import argparse
import csv
import math
import random
import sys

CHANNELS = ["flow_m3h", "pressure_bar", "temperature_c", "vibration_mm_s", "current_a"]


class Pump:
    def __init__(self, index, rng):
        self.name = f"pump-{index + 1}"
        self.phase = rng.random() * math.tau
        self.base_flow = 30.0 + 10.0 * rng.random()
        self.step_n = 0
        self.temperature = 48.0 + 0.1 * self.base_flow  # running temperature, no warm-up
        self.fault_left = 0
        self.values = {}

    def step(self, rng, fault_chance):
        self.step_n += 1
        if self.fault_left == 0 and rng.random() < fault_chance:
            self.fault_left = 20 + rng.randrange(20)
        faulty = self.fault_left > 0
        self.fault_left = max(0, self.fault_left - 1)
        t = self.step_n * 0.05 + self.phase
        flow = self.base_flow + 2.0 * math.sin(t) + rng.random() - 0.5
        pressure = 4.0 + 0.03 * flow + 0.05 * (rng.random() - 0.5)
        target = 70.0 if faulty else 48.0 + 0.1 * flow
        self.temperature += 0.1 * (target - self.temperature) + 0.1 * (rng.random() - 0.5)
        vibration = 7.0 + 3.0 * rng.random() if faulty else 1.8 + 0.4 * rng.random()
        current = 11.0 + 0.05 * flow + (1.5 if faulty else 0.0) + 0.1 * (rng.random() - 0.5)
        self.values = {
            "flow_m3h": flow,
            "pressure_bar": pressure,
            "temperature_c": self.temperature,
            "vibration_mm_s": vibration,
            "current_a": current,
        }
        return faulty


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pumps", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--fault-chance", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    pumps = [Pump(i, rng) for i in range(args.pumps)]
    out = csv.writer(sys.stdout)
    out.writerow(["ts", "device"] + CHANNELS + ["anomaly"])
    for step in range(args.steps):
        for pump in pumps:
            faulty = pump.step(rng, args.fault_chance)
            out.writerow(
                [1_790_000_000_000 + step * 1000, pump.name]
                + [f"{pump.values[c]:.3f}" for c in CHANNELS]
                + [1 if faulty else 0]
            )


if __name__ == "__main__":
    main()
