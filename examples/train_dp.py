"""Data-parallel training of a small numpy model across two sub-domains, with allreduce and a
checkpoint it resumes from.

    python examples/train_dp.py --steps 60                 # train, checkpointing every 10 steps
    python examples/train_dp.py --steps 60 --stop-after 30 # stop early (as if interrupted) ...
    python examples/train_dp.py --steps 60                 # ... and resume from step 30

The training data is a dataset made *on the nodes* (4 shards, 2 copies each across both regions);
one worker runs on every node holding shards. Each step every worker computes the gradient of a
logistic regression on the shards it was given (read from its own disk), the workers all-reduce
the gradients (a ring inside each sub-domain, one exchange between the sub-domains' leaders) and
every worker applies the same update to its replica of the model. The client only sees the loss,
and saves the model to a checkpoint every ``--every`` steps; a new run resumes from it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np

import dsdk

DIM = 20
ROWS = 2000


def make_shard(i: int) -> dict[str, np.ndarray]:
    """Runs on a node: features and labels of shard i (a fixed true model plus noise)."""
    truth = np.random.default_rng(0).normal(size=DIM)
    rng = np.random.default_rng(100 + i)
    x = rng.normal(size=(ROWS, DIM))
    y = (x @ truth + rng.normal(scale=0.5, size=ROWS) > 0).astype(np.float64)
    return {"x": x, "y": y}


def train(
    shards: list[int], steps: int, lr: float, start: np.ndarray | None
) -> tuple[np.ndarray, float, float]:
    """Runs on every worker at once: ``steps`` synchronous data-parallel steps."""
    from dsdk import collective

    state = dsdk.worker_state()
    group = collective.group()
    if "x" not in state:
        parts = [dsdk.read_shard("dp-train", s) for s in shards]
        state["x"] = np.concatenate([p["x"] for p in parts]) if parts else np.zeros((0, DIM))
        state["y"] = np.concatenate([p["y"] for p in parts]) if parts else np.zeros(0)
    if start is not None:
        state["w"] = start.copy()
    w = state.setdefault("w", np.zeros(DIM))
    x, y = state["x"], state["y"]
    loss = acc = 0.0
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(x @ w)))
        eps = 1e-12
        local = np.concatenate(
            [
                x.T @ (p - y),
                [
                    -(y * np.log(p + eps) + (1 - y) * np.log(1 - p + eps)).sum(),
                    ((p > 0.5) == y).sum(),
                    len(y),
                ],
            ]
        )
        total = group.allreduce(local)  # every worker gets the same sums
        n = total[-1]
        w -= lr * total[:DIM] / n
        loss, acc = total[DIM] / n, total[DIM + 1] / n
    state["w"] = w
    return w, float(loss), float(acc)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--every", type=int, default=10, help="checkpoint every N steps")
    ap.add_argument("--stop-after", type=int, default=0, help="stop after this step (as if interrupted)")
    ap.add_argument("--lr", type=float, default=0.5)
    ap.add_argument("--checkpoint", default=os.path.join(tempfile.gettempdir(), "dsdk-train-dp.npz"))
    args = ap.parse_args()

    with dsdk.connect() as client:
        ds = dsdk.Dataset.create(
            "dp-train", make_shard, 4, replicas=2, client=client, replace=True, cpus="500m"
        )
        step, weights = 0, None
        if os.path.exists(args.checkpoint):
            ck = np.load(args.checkpoint)
            step, weights = int(ck["step"]), ck["w"]
            print(f"resumed from step {step} (checkpoint {args.checkpoint})")
        with ds.pool(workers=4, cpus="500m") as pool:
            shards = ds.assign(pool.workers)
            where = sorted({(w.region, w.subdomain_id) for w in pool.workers})
            print(f"{len(pool.workers)} workers in {where}; shards per worker {shards}")
            loss = acc = 0.0
            while step < args.steps:
                n = min(args.every, args.steps - step)
                results = dsdk.gather(
                    [
                        pool.call(train, shards[w.task_index], n, args.lr, weights, worker=w)
                        for w in pool.workers
                    ]
                )
                weights = None  # the workers keep the model from now on
                w0, loss, acc = results[0]
                assert all(np.allclose(r[0], w0) for r in results), "replicas diverged"
                step += n
                np.savez(args.checkpoint, step=step, w=w0)
                print(f"step {step:4d}  loss {loss:.4f}  accuracy {acc:.3f}  (checkpoint saved)")
                if args.stop_after and step >= args.stop_after:
                    print(f"stopped at step {step}; run again to resume")
                    return 0
            stats = pool.stats()
        print(
            f"done: loss {loss:.4f}, accuracy {acc:.3f}; bytes moved between nodes {stats.bytes_between_nodes}, "
            f"between domains {stats.bytes_between_domains}, with the client {stats.bytes_client}"
        )
        os.remove(args.checkpoint)
        ds.delete()
    return 0 if acc > 0.85 else 1


if __name__ == "__main__":
    sys.exit(main())
