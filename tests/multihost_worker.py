"""A tiny RL, SFT and DPO set-up shared by tests/parallel/test_distributed.py, and the
worker of its two-process run.

As a script, one process of a multi-process `run_rl` on 127.0.0.1 (gloo CPU collectives,
4 fake CPU devices per process); the start-up comes from the environment
(AGRL_COORDINATOR, AGRL_NUM_PROCESSES, AGRL_PROCESS_ID), as `agrl train` reads it:

    python tests/multihost_worker.py WORLD INIT OUT DATA FSDP TENSOR

It runs 1 RL step (checkpoint), then resumes from that checkpoint for step 2, as two calls of
`run_rl` in one process; process 0 writes OUT/metrics.jsonl and OUT/model. Then 2 SFT steps
into OUT_sft and 2 DPO steps into OUT_dpo on the same mesh.
"""

from __future__ import annotations

import faulthandler
import os
import sys

# The tiny model: every dim divisible by the meshes of the tests (8 devices; tensor <= 2).
HANG_DUMP_S = 360  # under test_two_processes_equal_one_process's 420 s timeout

MODEL = [
    "model.vocab_size=384", "model.hidden_size=32", "model.intermediate_size=64",
    "model.num_layers=2", "model.num_heads=4", "model.num_kv_heads=2", "model.head_dim=8",
]  # fmt: skip
RUN = [
    "sampling.max_new_tokens=12", "sampling.prompt_buckets=16,32", "sampling.group_size=4",
    "train.prompts_per_step=4", "train.steps=2", "train.ckpt_every=1", "train.eval_size=0",
    "guidance.slots_per_batch=4", "guidance.tau=1.0", "optim.lr=1e-4", "optim.warmup_frac=0",
    "reward.fn=label_lenient", "reward.w_step=0", "reward.gate=none", "loss.mu=2",
]  # fmt: skip
# mu = 2: the second update of a batch is off-policy, so the loss value is non-zero (at mu = 1
# the GRPO loss is -mean(A) = 0 and only its gradient is not). lr 1e-4: Adam's first steps
# are ~lr * sign(g), which turns float noise in near-zero gradients into differences ~lr.


def register_lenient_reward() -> None:
    """reward = 1 when the response starts with the gold label, whatever follows.

    A random tiny model never writes a well-formed response, so RRS would give every rollout
    format_fail and every advantage would be 0; guided rollouts start with the forced gold
    label, so under this reward the groups have variance and the updates are non-zero.
    """
    import jax.numpy as jnp

    from agrl.rl.rewards import register_reward_fn, rrs_reward

    def label_lenient(pred_label, pred_verdicts, format_ok, *gold_and_cfg):
        return rrs_reward(pred_label, pred_verdicts, jnp.ones_like(format_ok), *gold_and_cfg)

    register_reward_fn("label_lenient", label_lenient)


def make_world(directory) -> None:
    from agrl.world.config import WorldConfig
    from agrl.world.splits import write_world

    write_world(WorldConfig(n_sft=8, n_rl=16, n_b_eval=8, n_w_eval=8), directory)


def make_init_model(directory, world) -> None:
    """A random tiny model (Hugging Face directory with the world's tokenizer)."""
    import jax

    from agrl.config import load_config
    from agrl.model import init_params, save_pretrained
    from agrl.task.tokenizer import load_tokenizer

    cfg = load_config(None, MODEL).model
    params = init_params(cfg, jax.random.key(7), init_std=0.2)
    save_pretrained(params, cfg, directory, tokenizer=load_tokenizer(f"{world}/tokenizer"))


def _config(settings: list[str], world, init, out, mesh: tuple[int, int, int]):
    from agrl.config import load_config

    data, fsdp, tensor = mesh
    return load_config(
        None,
        MODEL
        + settings
        + [f"paths.world={world}", f"paths.init={init}", f"paths.out={out}"]
        + [f"mesh.data={data}", f"mesh.fsdp={fsdp}", f"mesh.tensor={tensor}"],
    )


def rl_config(world, init, out, mesh: tuple[int, int, int]):
    return _config(RUN, world, init, out, mesh)


# SFT and DPO: the world's responses need T >= 31 tokens; 8 rows split over 8 devices.
SUPERVISED = [
    "sampling.max_new_tokens=40", "sft.steps=2", "sft.batch_size=8", "sft.lr=1e-4",
    "sft.warmup_frac=0", "dpo.steps=2", "dpo.batch_size=8", "dpo.lr=1e-4", "dpo.warmup_frac=0",
    "dpo.pass_n=2", "dpo.mine_prompts=8", "train.ckpt_every=1", "train.eval_size=0",
]  # fmt: skip


def supervised_config(world, init, out, mesh: tuple[int, int, int]):
    """SFT from the random init on the sft split, or DPO from it on the rl split."""
    return _config(SUPERVISED, world, init, out, mesh)


def run_two_steps_with_resume(world, init, out, mesh) -> None:
    """Step 1, checkpoint, then a fresh run_rl resumes from it and runs step 2."""
    from agrl.train.stages import run_rl

    cfg = rl_config(world, init, out, mesh)
    first = run_rl(cfg, stop_after=1)
    assert not first["complete"]
    assert run_rl(cfg, resume=True)["complete"]


def main(argv: list[str]) -> None:
    # a hang (a collective one process never joins) prints every thread's stack before the
    # test's own timeout kills the process, so the failure shows where it stopped
    faulthandler.dump_traceback_later(HANG_DUMP_S, exit=False)
    world, init, out = argv[:3]
    mesh = tuple(int(x) for x in argv[3:6])
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    os.environ["JAX_PLATFORMS"] = "cpu"
    from agrl.parallel.distributed import init_distributed, resolve_spec

    assert init_distributed(resolve_spec())
    import jax

    assert jax.process_count() == 2 and jax.local_device_count() == 4
    # The resumed run_rl builds new jitted functions; a persistent cache (one per process)
    # spares their second compilation.
    jax.config.update("jax_compilation_cache_dir", f"{out}.jax_cache{jax.process_index()}")
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    register_lenient_reward()
    run_two_steps_with_resume(world, init, out, mesh)
    from agrl.train.stages import run_dpo, run_sft

    for stage, run in (("sft", run_sft), ("dpo", run_dpo)):
        assert run(supervised_config(world, init, f"{out}_{stage}", mesh))["complete"]
    faulthandler.cancel_dump_traceback_later()
    print(f"process {jax.process_index()} done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
