"""What differs between the two training backends: SB3 (torch modules) and SBX (JAX train states).

Both share SB3's algorithm API, callbacks, replay buffers and ``model.zip``; they differ in where the policy's
parameters and optimizer state live. An SB3 policy is a torch module with ``state_dict()``; an SBX policy holds
flax train states (``actor_state``, ``qf_state``, ``vf_state``: parameters, optimizer state, target parameters,
batch statistics), pickled whole into ``model.zip``. This module gives the trainer and the evaluation worker
one way to take and load weights, rebuild a policy in another process and warm-start from a bundle, and sets
XLA's threads for small machines. JAX is imported only by SBX sessions.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from rlpipe.config import SessionConfig

log = logging.getLogger(__name__)

# Train states an SBX policy may hold (SAC, TD3, TQC, CrossQ: actor and critic; PPO: actor and value function).
TRAIN_STATES = ("actor_state", "qf_state", "vf_state")
# Parts of a train state that belong to the optimizer, carried only with handoff.optimizer: carry. The rest
# (parameters, target parameters, batch statistics) is the policy; apply_fn and tx come from the new model.
OPTIMIZER_FIELDS = ("opt_state", "step")
CODE_FIELDS = ("apply_fn", "tx")
# XLA's CPU client runs each op on an Eigen thread pool as wide as the machine unless told otherwise.
SINGLE_THREAD_XLA_FLAGS = ("--xla_cpu_multi_thread_eigen=false", "intra_op_parallelism_threads=1")


class HandoffMismatch(RuntimeError):
    """The previous bundle's states do not fit this session's model (validation keeps this from happening)."""


def is_jax_policy(policy: Any) -> bool:
    """Whether ``policy`` is an SBX (JAX) policy: SB3's torch policies hold no train states."""
    return any(getattr(policy, name, None) is not None for name in TRAIN_STATES)


# -- threads ----------------------------------------------------------------------------------------------
def xla_single_threaded_for(session: SessionConfig) -> bool:
    """Whether XLA runs each op on one thread for ``session``: on machines of at most 2 cores, where the
    evaluation worker and the env stepping need the other core (measured: bench/RESULTS.md, sbx section), as
    the torch thread rule does; larger machines keep XLA's default pool. ``torch_threads`` set in the session
    also sets this: one thread means single-threaded XLA."""
    if session.torch_threads is not None:
        return session.torch_threads == 1
    return (os.cpu_count() or 1) <= 2


def xla_flags(single_threaded: bool, current: str = "") -> str:
    """``XLA_FLAGS`` with the thread flags set (other flags a user gave are kept)."""
    kept = [f for f in current.split() if not f.startswith(("--xla_cpu_multi_thread_eigen", "intra_op_parallelism"))]
    return " ".join(kept + list(SINGLE_THREAD_XLA_FLAGS if single_threaded else ()))


def configure_xla_threads(session: SessionConfig) -> None:
    """Set XLA's threads for an SBX session before JAX starts its CPU client (read once per process: a second
    session in the same process keeps the first one's setting, which the same rule gives on the same machine)."""
    if session.backend != "sbx":
        return
    flags = xla_flags(xla_single_threaded_for(session), os.environ.get("XLA_FLAGS", ""))
    if "jax" in sys.modules:
        from jax._src import xla_bridge

        if xla_bridge.backends_are_initialized():
            if flags != os.environ.get("XLA_FLAGS", ""):
                log.info("session %s: JAX already started in this process; XLA threads stay as they are",
                         session.name)
            return
    os.environ["XLA_FLAGS"] = flags


# -- weights for evaluation -------------------------------------------------------------------------------
def _actor_tree(policy: Any) -> dict[str, Any]:
    state = policy.actor_state
    tree = {"params": state.params}
    if hasattr(state, "batch_stats"):  # CrossQ's batch renormalisation statistics act at inference too
        tree["batch_stats"] = state.batch_stats
    return tree


def policy_weights(policy: Any) -> dict[str, np.ndarray]:
    """A copy of what acting needs, as numpy arrays by name: the torch ``state_dict``, or the SBX actor's
    parameters (and batch statistics)."""
    if not is_jax_policy(policy):
        return {k: v.detach().cpu().numpy().copy() for k, v in policy.state_dict().items()}
    import jax

    leaves, _ = jax.tree_util.tree_flatten_with_path(_actor_tree(policy))
    return {jax.tree_util.keystr(path): np.array(leaf, copy=True) for path, leaf in leaves}


def load_policy_weights(policy: Any, weights: dict[str, np.ndarray]) -> None:
    """Load weights taken by :func:`policy_weights` into a policy of the same kind and shape."""
    if not is_jax_policy(policy):
        import torch

        policy.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
        return
    import jax

    leaves, treedef = jax.tree_util.tree_flatten_with_path(_actor_tree(policy))
    tree = jax.tree_util.tree_unflatten(treedef, [weights[jax.tree_util.keystr(path)] for path, _ in leaves])
    policy.actor_state = policy.actor_state.replace(**tree)


def _rebuild_jax_policy(blob: bytes) -> Any:
    """An SBX policy from :func:`policy_factory`'s bytes, in a process that may not have imported JAX yet:
    evaluation batches are small, so XLA gets one thread there."""
    if "jax" not in sys.modules:
        os.environ["XLA_FLAGS"] = xla_flags(True, os.environ.get("XLA_FLAGS", ""))
    import cloudpickle

    return cloudpickle.loads(blob)


def policy_factory(policy: Any) -> tuple[Callable[..., Any], dict[str, Any]]:
    """``(factory, kwargs)``: ``factory(**kwargs)`` builds a policy like ``policy`` in another process (picklable
    both). A torch policy is rebuilt from its constructor parameters; an SBX policy, whose train states hold
    functions, travels pickled by cloudpickle as SB3's ``model.zip`` stores it."""
    if not is_jax_policy(policy):
        return type(policy), policy._get_constructor_parameters()
    import cloudpickle

    return _rebuild_jax_policy, {"blob": cloudpickle.dumps(policy)}


# -- warm start -------------------------------------------------------------------------------------------
def _check_same_shapes(name: str, new: Any, old: Any) -> None:
    import jax

    shapes = [jax.tree_util.tree_map(lambda a: np.shape(a), s.params) for s in (new, old)]
    if jax.tree_util.tree_structure(new.params) != jax.tree_util.tree_structure(old.params) or shapes[0] != shapes[1]:
        raise HandoffMismatch(f"the previous bundle's {name} has other parameters than this session's model "
                              "(policy_kwargs or algorithm differ)")


def warm_start_jax(model: Any, model_zip: Path, carry_optimizer: bool) -> None:
    """Load the previous SBX bundle's policy into ``model``: parameters, target parameters and batch statistics
    of every train state; with ``carry_optimizer`` also their optimizer state and the learned entropy
    coefficient with its optimizer (what SB3's handoff carries as optimizer moments and ``log_ent_coef``)."""
    from stable_baselines3.common.save_util import load_from_zip_file

    data, _, _ = load_from_zip_file(str(model_zip), device="cpu")
    previous = (data or {}).get("policy")
    if previous is None or not is_jax_policy(previous):
        raise HandoffMismatch(f"{model_zip} holds no SBX policy: the previous session trained on another backend")
    for name in TRAIN_STATES:
        new = getattr(model.policy, name, None)
        if new is None:
            continue
        old = getattr(previous, name, None)
        if old is None or type(old) is not type(new):
            raise HandoffMismatch(f"the previous bundle's policy has no {name} of type {type(new).__name__}")
        _check_same_shapes(name, new, old)
        skip = CODE_FIELDS + (() if carry_optimizer else OPTIMIZER_FIELDS)
        taken = {f.name: getattr(old, f.name) for f in fields(old) if f.name not in skip}
        setattr(model.policy, name, new.replace(**taken))
    entropy = (data or {}).get("ent_coef_state")
    if carry_optimizer and entropy is not None and getattr(model, "ent_coef_state", None) is not None:
        _check_same_shapes("entropy coefficient", model.ent_coef_state, entropy)
        model.ent_coef_state = model.ent_coef_state.replace(
            params=entropy.params, opt_state=entropy.opt_state, step=entropy.step)
