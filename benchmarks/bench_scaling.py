"""Throughput of data-parallel sampling (issue 8): samples per second against the device count.

Each device count runs in its own subprocess (the count is fixed when JAX starts): on a CPU-only machine
with ``XLA_FLAGS=--xla_force_host_platform_device_count=K`` (K fake CPU devices sharing the machine's
cores), on a GPU machine with the first K real devices (``--platform gpu``). In each, the shipped digits
model (UNet, 1.0 M parameters, 8x8x1) samples a batch of N with ``dg.sample_sharded`` (constant Tsit5
steps, log-density tracked with one Hutchinson probe), for the PF-ODE and density guidance (q = 0.4):
one compiling warm-up, then the best of ``--repeats`` timed calls.

On fake CPU devices the devices share the same cores, so throughput cannot grow with K beyond what XLA's
own intra-op threading already used on one device; the table shows the overhead of partitioning (and the
gain, where one device's program leaves cores idle). Real speed-ups need real devices.

    python benchmarks/bench_scaling.py                  # K = 1, 2, 4 fake CPU devices, N = 16, 10 steps
    python benchmarks/bench_scaling.py --n 64 --steps 20 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

WORKER = r"""
import json, sys, time
import jax, jax.numpy as jnp
import dgjax as dg
k, n, steps, repeats = (int(a) for a in sys.argv[1:5])
devices = jax.devices()[:k]
assert len(devices) == k, jax.devices()
model = dg.load_model("digits")
x_T = model.prior_sample(jax.random.key(0), n)
key = jax.random.key(1)
res = {"k": k, "platform": devices[0].platform, "device_kind": devices[0].device_kind}
for name, sampler in (("PF-ODE", dg.PFODE()), ("DG-ODE q=0.4", dg.DensityGuidance(0.4))):
    run = lambda: dg.sample_sharded(model.score, model.process, x_T, sampler=sampler, key=key, track_logp=True,
                                    steps=steps, devices=devices)
    t0 = time.perf_counter(); out = jax.block_until_ready(run()); compile_s = time.perf_counter() - t0
    assert len(out.x.sharding.device_set) == k
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter(); out = jax.block_until_ready(run()); best = min(best, time.perf_counter() - t0)
    res[name] = {"seconds": best, "samples_per_s": n / best, "first_call_s": compile_s,
                 "mean_logp": float(jnp.mean(out.logp))}
print("RESULT " + json.dumps(res))
"""


def run_one(k: int, n: int, steps: int, repeats: int, platform: str) -> dict:
    env = dict(os.environ)
    if platform == "cpu":
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={k}").strip()
        env["JAX_PLATFORMS"] = "cpu"
    res = subprocess.run([sys.executable, "-c", WORKER, str(k), str(n), str(steps), str(repeats)], env=env,
                         capture_output=True, text=True, timeout=900)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
    if res.returncode != 0 or not lines:
        raise RuntimeError(f"device count {k} failed:\n{res.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--n", type=int, default=16, help="batch size (a multiple of every device count)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--platform", choices=["cpu", "gpu"], default="cpu")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    bad = [k for k in args.devices if args.n % k]
    if bad:
        ap.error(f"--n: {args.n} is not a multiple of the device counts {bad}")
    t0 = time.perf_counter()
    rows = [run_one(k, args.n, args.steps, args.repeats, args.platform) for k in args.devices]
    names = ["PF-ODE", "DG-ODE q=0.4"]
    print(f"digits UNet, N = {args.n}, Tsit5 x {args.steps} steps, log p tracked (Hutchinson, 1 probe); "
          f"{rows[0]['platform']} ({rows[0]['device_kind']}), {os.cpu_count()} cores visible")
    print(f"{'devices':>7} | " + " | ".join(f"{nm + ' samples/s':>24} {'speed-up':>8}" for nm in names)
          + " | first call s (compile)")
    base = {nm: rows[0][nm]["samples_per_s"] for nm in names}
    for r in rows:
        cells = " | ".join(f"{r[nm]['samples_per_s']:>24.1f} {r[nm]['samples_per_s'] / base[nm]:>8.2f}" for nm in names)
        comp = ", ".join(f"{r[nm]['first_call_s']:.1f}" for nm in names)
        print(f"{r['k']:>7} | {cells} | {comp}")
    spread = max(abs(r[nm]["mean_logp"] - rows[0][nm]["mean_logp"]) for r in rows for nm in names)
    print(f"max |mean log p (K devices) - mean log p (1 device)| = {spread:.2e}  (same samples on every K)")
    print(f"total {time.perf_counter() - t0:.0f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
