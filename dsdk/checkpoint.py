"""Task checkpoints (see :mod:`dsdk._checkpoint`)::

from dsdk import checkpoint
ck = checkpoint.Checkpointer()             # this job and task index; root: $DOMAINOS_CHECKPOINT_DIR
restored = ck.latest()                     # None, or Checkpoint(step=..., state=..., saved_at=..., attempt=...)
start = restored.step + 1 if restored else 0
for step in range(start, steps):
    ...
    if step % 100 == 0:
        ck.save_async(step, state)         # snapshot now, write in the background (or ck.save: now)
ck.wait()

A rescheduled attempt of the task (same job, same task index) finds what earlier attempts saved.
"""

from dsdk._checkpoint import MARKER, ROOT_ENV, Checkpoint, Checkpointer

__all__ = ["MARKER", "ROOT_ENV", "Checkpoint", "Checkpointer"]
