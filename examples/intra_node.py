"""Intra-node compute with dsdk.intra: one DevicePool over this machine's GPUs, or its CPU cores.

    python examples/intra_node.py

Scatters a 64 MiB array over the devices, runs a numpy function on every device in parallel,
combines the partial results with a tree reduce and an allreduce, and checks them against numpy.
"""

from __future__ import annotations

import time

import numpy as np

from dsdk.intra import DevicePool


def partial_stats(part: np.ndarray) -> np.ndarray:
    """Per-column sum of sqrt(x) * sin(x) over this device's rows."""
    return np.sum(np.sqrt(part) * np.sin(part), axis=0)


def main() -> int:
    x = np.random.default_rng(0).random((1 << 20, 8))  # 64 MiB of float64
    started = time.perf_counter()
    with DevicePool() as pool:  # CUDA when PyTorch sees a GPU, else one worker per CPU core
        ready = time.perf_counter()
        print(
            f"{len(pool)} {pool.kind} devices: {', '.join(str(d) for d in pool.devices)} ({pool.devices[0].name})"
        )
        if pool.kind == "cuda":  # parts are torch tensors there
            import torch

            fn = lambda t: torch.sum(torch.sqrt(t) * torch.sin(t), dim=0)  # noqa: E731
        else:
            fn = partial_stats
        parts = pool.scatter(x)  # CPU: copied once into shared memory; workers get views
        partial = pool.map(fn, parts)
        total = pool.reduce(lambda a, b: a + b, partial)
        everywhere = pool.allreduce(partial, op="sum")
        done = time.perf_counter()
        rows = [len(parts.local(i)) for i in range(len(parts))]
        copies = list(everywhere)  # host arrays stay valid after the pool closes
        stats = pool.stats()
    expected = partial_stats(x)
    assert np.allclose(total, expected) and all(np.allclose(c, expected) for c in copies)
    print(f"rows per device:       {rows}")
    print(f"sum(sqrt(x)*sin(x)):   {np.round(total, 2)}")
    print(f"matches numpy:         yes (max error {np.abs(total - expected).max():.1e})")
    print(f"pool start:            {(ready - started) * 1000:.0f} ms")
    print(f"scatter+map+reduce+allreduce: {(done - ready) * 1000:.0f} ms")
    print(
        f"through pipes:         {stats.pipe_bytes_sent + stats.pipe_bytes_received} bytes "
        f"(array data in shared memory: {stats.shm_bytes_created >> 20} MiB)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
