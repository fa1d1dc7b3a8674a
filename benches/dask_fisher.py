"""The cost of distribution (issue 15): ``fastad.dask.fisher`` on a two-worker
``dask.distributed.LocalCluster`` beside the single-process ``model.fisher`` on the same
machine, for the 10 → 64 → 20 → 1 tanh network (P = 2,025), float32, N = 10⁶ by default.

The two run in alternating rounds, so a slow spell of the shared machine hits both; the cell
is the median. Each worker process gets one thread and gives fastad one (``fa.set_num_threads``
on the workers: with the machine's cores shared between two processes, more threads per
process only wait on each other); the single process uses every core. Ratios are times (below
1.3 is the issue's goal).

    python benches/dask_fisher.py                     # N = 10⁶, 3 rounds
    python benches/dask_fisher.py --n 200000 --rounds 5 --chunks 8
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

import fastad as fa


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chunks", type=int, default=8, help="row chunks of X")
    parser.add_argument("--kind", default="empirical", choices=("empirical", "ggn"))
    args = parser.parse_args()
    import dask.array as da
    from dask.distributed import Client, LocalCluster
    import fastad.dask as fd

    workers = 2
    cores = os.cpu_count() or 1
    model = fa.Chain(fa.Dense(10, 64, "tanh"), fa.Dense(64, 20, "tanh"), fa.Dense(20, 1),
                     dtype=np.float32, seed=0)
    rows = -(-args.n // args.chunks)
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        client.run(fa.set_num_threads, max(1, cores // workers))
        # The data is made and kept on the workers, as a cluster's data would be; a copy
        # comes here for the single process. Not timed.
        rng = da.random.default_rng(0)
        Xd = client.persist(rng.standard_normal((args.n, 10), chunks=(rows, 10), dtype=np.float32))
        Yd = client.persist(rng.standard_normal((args.n, 1), chunks=(rows, 1), dtype=np.float32))
        X, Y = Xd.compute(), Yd.compute()
        runs = {
            "model.fisher (one process)": lambda: model.fisher(X, Y, loss="mse", kind=args.kind),
            f"fastad.dask.fisher ({workers} workers)":
                lambda: fd.fisher(model, Xd, Yd, loss="mse", kind=args.kind),
        }
        times = {name: [] for name in runs}
        results = {}
        print(f"CPU instruction set: {fa.instruction_set()}, {cores} cores; N = {args.n:,}, "
              f"P = {model.n_params:,}, {args.chunks} chunks of {rows:,} rows, "
              f"kind={args.kind!r}", flush=True)
        for r in range(args.rounds):
            for name, fn in runs.items():
                t = time.perf_counter()
                results[name] = fn()
                times[name].append(time.perf_counter() - t)
                print(f"  round {r + 1}: {name}: {times[name][-1]:.2f} s", flush=True)
        one, many = (np.median(v) for v in times.values())
        a, b = results.values()
        err = float(np.abs(a.astype(np.float64) - b).max() / np.abs(a).max())
        print(f"\nmedian: one process {one:.2f} s, cluster {many:.2f} s: "
              f"cluster ÷ one process = {many / one:.2f}× (goal ≤ 1.3×); "
              f"max relative difference {err:.1e} (float32 sums in another order)")


if __name__ == "__main__":
    main()
