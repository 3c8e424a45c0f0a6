"""Training checkpoints on disk and reading a training run directory as a model.

A run directory (``dgjax train --out RUN``) holds ``config.json`` (``{"train": settings, "model": model
config}``), orbax checkpoints ``checkpoints/STEP`` of the whole training state (parameters, EMA parameters,
optimiser state, noise-level histogram, step) and ``checksums/STEP.sha256`` beside them. Reading and writing
those files lives here, in the models layer, so that ``dg.load_model(RUN)`` reads a run without importing
the training layer above it (docs/ARCHITECTURE.md); ``dgjax.training`` writes them through ``Checkpoints``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._io import atomic_write, leaf_shapes, write_bytes
from ..errors import ModelError
from .configs import validate_config
from .networks import check_same_architecture, param_shapes
from .trained import TrainedModel, network_from_config


def _flatten_opt(opt_state) -> dict:
    leaves = jax.tree_util.tree_leaves(opt_state)
    return {f"{i:04d}": v for i, v in enumerate(leaves)}


def _to_saveable(state) -> dict:
    return {"step": state["step"], "params": state["params"], "ema_params": state["ema_params"],
            "opt_state": _flatten_opt(state["opt_state"]), "hist": state["hist"]}


def _from_saveable(saved, template) -> dict:
    """Rebuild the state from a restored tree, as plain (uncommitted) arrays of the template's dtypes: the
    compiled step then sees exactly the input types of a fresh run and is not compiled again."""
    fresh = lambda v, like: jnp.asarray(np.asarray(v, dtype=like.dtype))  # noqa: E731
    treedef = jax.tree_util.tree_structure(template["opt_state"])
    opt_leaves = [saved["opt_state"][k] for k in sorted(saved["opt_state"])]
    opt_like = jax.tree_util.tree_leaves(template["opt_state"])
    return {"step": fresh(saved["step"], template["step"]),
            "params": jax.tree_util.tree_map(fresh, saved["params"], template["params"]),
            "ema_params": jax.tree_util.tree_map(fresh, saved["ema_params"], template["ema_params"]),
            "opt_state": jax.tree_util.tree_unflatten(
                treedef, [fresh(v, w) for v, w in zip(opt_leaves, opt_like, strict=True)]),
            "hist": fresh(saved["hist"], template["hist"])}


def _checksum(saved) -> str:
    """sha256 over the bytes of every leaf of a saveable tree (params, EMA, optimizer, histogram, step)."""
    import hashlib

    h = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(saved):
        h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return h.hexdigest()


def state_checksum(state) -> str:
    """sha256 over the bytes of every leaf of the training state (params, EMA, optimizer, histogram, step)."""
    return _checksum(_to_saveable(state))


class Checkpoints:
    """The orbax checkpoints of a run: ``RUN/checkpoints/STEP``, the last ``keep`` kept."""

    def __init__(self, run_dir: str, keep: int = 3, read_only: bool = False):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.directory = os.path.join(os.path.abspath(run_dir), "checkpoints")
        if read_only and not os.path.isdir(self.directory):
            raise ModelError(f"run directory {run_dir!r} has no checkpoints/ folder; is it a dgjax training run?")
        if not read_only and os.path.isdir(self.directory):
            # a save killed half-way leaves only orbax's temporary directory (STEP.orbax-checkpoint-tmp-*),
            # which is never taken for a checkpoint; delete such leftovers before writing new ones
            for entry in os.listdir(self.directory):
                if ".orbax-checkpoint-tmp" in entry:
                    shutil.rmtree(os.path.join(self.directory, entry), ignore_errors=True)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only,
                                               enable_async_checkpointing=False, read_only=read_only)
        logging.getLogger("absl").setLevel(logging.ERROR)  # orbax's notes on read-only managers etc.
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_handlers=ocp.StandardCheckpointHandler())

    def latest_step(self):
        return self.manager.latest_step()

    def all_steps(self):
        return list(self.manager.all_steps())

    def _checksum_path(self, step: int) -> str:
        return os.path.join(os.path.dirname(self.directory), "checksums", f"{step}.sha256")

    def save(self, state) -> None:
        """Save ``state`` as checkpoint ``state["step"]``: its checksum first (a kill between the two leaves a
        checksum without a checkpoint, never a checkpoint without one), then the orbax checkpoint. A failed
        save (a full disk) is one ``OSError`` naming the step, with orbax's own logging silenced."""
        step = int(state["step"])
        # a checksum beside the checkpoint: finite corruption (a flipped mantissa bit) is caught on restore
        try:
            os.makedirs(os.path.dirname(self._checksum_path(step)), exist_ok=True)
            atomic_write(self._checksum_path(step), write_bytes((state_checksum(state) + "\n").encode()))
            absl = logging.getLogger("absl")
            level = absl.level
            absl.setLevel(logging.CRITICAL + 1)  # orbax logs each failed file with a traceback
            try:
                self.manager.save(step, args=self._ocp.args.StandardSave(_to_saveable(state)), force=True)
                self.manager.wait_until_finished()
            finally:
                absl.setLevel(level)
        except Exception as e:  # orbax wraps the OSError of a full disk in its own types
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise OSError(f"saving the checkpoint of step {step} in {self.directory!r} failed ({first}); free "
                          f"space and continue with --resume from the last checkpoint") from e

    def stored_param_shapes(self, step: int, entry: str = "params") -> dict:
        """{path: shape} of the stored ``entry`` ("params", "ema_params", "opt_state", ...) of checkpoint ``step``."""
        where = f"checkpoint {os.path.join(self.directory, str(step))!r}"
        try:
            meta = self.manager.item_metadata(step)
        except Exception as e:
            raise ModelError(f"{where} is corrupt or truncated (its metadata cannot be read: "
                             f"{type(e).__name__}: {e}). Delete that step's folder to resume from an earlier "
                             f"checkpoint.") from e
        tree = getattr(meta, "tree", meta)
        if not isinstance(tree, dict) or "params" not in tree:
            raise ModelError(f"{where} is corrupt or not a dgjax training checkpoint (no 'params' entry)")
        return leaf_shapes(tree.get(entry, {}))

    def _restore_saved(self, step: int | None, expected_params: dict, target) -> Mapping[str, Any]:
        """The saved tree of checkpoint ``step`` (latest if None), checked: parameter shapes against
        ``expected_params`` ({path: shape}), every parameter finite, contents against the stored checksum.
        ``target``: a tree of ShapeDtypeStructs, or None to restore by the checkpoint's own metadata."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise ModelError(f"no checkpoint in {self.directory!r}")
        where = f"checkpoint {os.path.join(self.directory, str(step))!r}"
        check_same_architecture(expected_params, self.stored_param_shapes(step), where)
        if target is None:  # the checkpoint's own structure (stored_param_shapes read its metadata already)
            meta = self.manager.item_metadata(step)
            target = jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype),
                                            getattr(meta, "tree", meta))
        try:
            saved = self.manager.restore(step, args=self._ocp.args.StandardRestore(target))
        except Exception as e:
            raise ModelError(f"{where} is corrupt or truncated (restoring it failed: {type(e).__name__}: "
                             f"{str(e)[:300]}). Delete that step's folder to resume from an earlier "
                             f"checkpoint.") from e
        bad = [k for k in ("params", "ema_params")
               if not all(np.isfinite(np.asarray(a)).all() for a in jax.tree_util.tree_leaves(saved[k]))]
        if bad:
            raise ModelError(f"{where} is corrupt: {bad} hold non-finite values")
        try:
            with open(self._checksum_path(step)) as fh:
                expected = fh.read().strip()
        except FileNotFoundError:  # the checksum is written before the checkpoint: it was lost or deleted
            raise ModelError(f"{where} has no checksum ({self._checksum_path(step)!r} is missing), so its contents "
                             f"cannot be verified. Delete that step's folder to resume from an earlier "
                             f"checkpoint.") from None
        if expected != _checksum(saved):
            raise ModelError(f"{where} is corrupt: its contents differ from the checksum written when it was saved "
                             f"({self._checksum_path(step)!r}). Delete that step's folder to resume from an earlier "
                             f"checkpoint.")
        return saved

    def restore(self, template, step: int | None = None) -> dict:
        """The training state of checkpoint ``step`` (latest if None) in the structure of ``template``."""
        # the template may be abstract (jax.eval_shape): take shape and dtype without converting it
        target = jax.tree_util.tree_map(
            lambda v: jax.ShapeDtypeStruct(np.shape(v), v.dtype if hasattr(v, "dtype") else jnp.asarray(v).dtype),
            _to_saveable(template))
        step = self.latest_step() if step is None else step
        if step is not None:  # another optimiser layout (an older dgjax): say so, rather than "corrupt"
            stored, want = self.stored_param_shapes(step, "opt_state"), leaf_shapes(target["opt_state"])
            if stored and len(stored) != len(want):  # shapes alone differ for another architecture: checked below
                raise ModelError(
                    f"checkpoint {os.path.join(self.directory, str(step))!r} holds an optimiser state of another "
                    f"layout ({len(stored)} arrays; this dgjax's optimiser has {len(want)}): it was written by "
                    f"another version of dgjax, so the run cannot be resumed exactly. dg.load_model on the run "
                    f"directory still reads its parameters; start a new run to continue training.")
        return _from_saveable(self._restore_saved(step, leaf_shapes(template["params"]), target), template)

    def restore_params(self, net, shape, step: int | None = None, which: str = "ema_params"):
        """The parameters (``which``: "ema_params" or "params") of checkpoint ``step``, checked against the
        architecture of ``net`` on data ``shape``; the optimiser state is read but not needed."""
        saved = self._restore_saved(step, param_shapes(net, shape), None)
        return jax.tree_util.tree_map(lambda v: jnp.asarray(np.asarray(v)), saved[which])

    def close(self):
        self.manager.close()



def _read_json(path: str, what: str):
    try:
        with open(path) as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise ModelError(f"{what} (no {os.path.basename(path)})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"{path!r} is corrupt or truncated: {e}") from e


def read_run_config(run_dir: str) -> dict:
    """RUN/config.json as written by ``dgjax.training.train``: ``{"train": settings, "model": model config}``."""
    d = _read_json(os.path.join(run_dir, "config.json"), f"{run_dir!r} is not a dgjax training run")
    if not isinstance(d, dict):
        raise ModelError(f"{os.path.join(run_dir, 'config.json')!r} is not a JSON object")
    return d


def load_run(run_dir: str, step: int | None = None, ema: bool = True) -> TrainedModel:
    """The model of a training run directory at its latest (or given) checkpoint (EMA parameters unless
    ``ema=False``). The network comes from the run's model config; the checkpoint is restored by its own
    metadata, so no optimiser (training layer) is needed to read it."""
    d = read_run_config(run_dir)
    if not isinstance(d.get("model"), dict):
        raise ModelError(f"{os.path.join(run_dir, 'config.json')!r} holds no model config (key 'model'); is it a "
                         f"dgjax training run?")
    mcfg = validate_config(dict(d["model"], name=os.path.basename(os.path.abspath(run_dir))),
                           f"the model config in {os.path.join(run_dir, 'config.json')!r}")
    net = network_from_config(mcfg)
    ckpts = Checkpoints(run_dir, read_only=True)
    try:
        params = ckpts.restore_params(net, mcfg["shape"], step, "ema_params" if ema else "params")
    finally:
        ckpts.close()
    return TrainedModel(net, params, mcfg)
