"""The headline figures, the throughput plot and ``RESULTS.md``, from the results document."""

from __future__ import annotations

from pathlib import Path
from typing import Any

GOALS = {
    "throughput_ratio_vs_sb3_same_settings": (">=", 0.97),
    "throughput_ratio_vs_sb3_defaults": (">=", 1.5),
    "transition_seconds_median": ("<=", 2.0),
    "transition_seconds_median_full_budget": ("<=", 2.0),
    "cloud_end_to_next_create_seconds": ("<=", 20.0),
    "sbx_sac_throughput_ratio_vs_sb3_defaults": (">=", 1.5),
    "sbx_sac_throughput_ratio_vs_sbx_same_settings": (">=", 0.97),
}


def _met(key: str, value: float | None) -> bool | None:
    if key not in GOALS or value is None:
        return None
    op, bound = GOALS[key]
    return value >= bound if op == ">=" else value <= bound


def _case_name(case: dict[str, Any]) -> str:
    return f"{case['algorithm']} on {case['env']}"


def _worst(cases: list[dict[str, Any]], key: str) -> tuple[float | None, str | None, dict[str, float | None]]:
    per_case = {_case_name(c): c["ratios"].get(key) for c in cases}
    known = {k: v for k, v in per_case.items() if v is not None}
    if not known:
        return None, None, per_case
    case = min(known, key=known.__getitem__)
    return known[case], case, per_case


def headline(results: dict[str, Any]) -> dict[str, Any]:
    """The figures a reader looks at first; throughput ratios are the worst over algorithms and envs."""
    out: dict[str, Any] = {}
    tp = results.get("throughput")
    if tp:
        runs = tp["repetitions"]
        for key, name in (("vs_sb3_same_settings", "throughput_ratio_vs_sb3_same_settings"),
                          ("vs_sb3_defaults", "throughput_ratio_vs_sb3_defaults"),
                          ("vs_raw_env", "throughput_ratio_vs_raw_env"),
                          ("measured_eval_vs_sb3_same_settings",
                           "throughput_ratio_measured_eval_vs_sb3_same_settings"),
                          ("in_process_eval_vs_sb3_same_settings",
                           "throughput_ratio_in_process_eval_vs_sb3_same_settings"),
                          ("training_only_vs_sb3_same_settings",
                           "throughput_ratio_training_only_vs_sb3_same_settings")):
            value, case, per_case = _worst(tp["cases"], key)
            out[name] = {"value": value, "unit": "ratio of median env steps/s (rlpipe / baseline)", "runs": runs,
                         "worst_case": case, "per_case": per_case}
        st = tp["cases"][0]["rlpipe_settings"] if tp["cases"] else {}
        worst = next((c for c in tp["cases"] if _case_name(c) == out["throughput_ratio_vs_sb3_same_settings"]
                      ["worst_case"]), None)
        where = "in a background process" if worst and worst.get("rlpipe_background_eval") \
            else "in the training process"
        out["throughput_ratio_vs_sb3_same_settings"]["note"] = (
            f"rlpipe at its defaults in steady state: evaluation ({st.get('eval_episodes')} full-length episodes, "
            f"{where} in the worst case) every {st.get('eval_every_steps')} steps and a checkpoint every "
            f"{st.get('checkpoint_every_steps')} steps")
        out["throughput_ratio_in_process_eval_vs_sb3_same_settings"]["note"] = (
            "rlpipe with eval.background: false, in steady state: the same evaluations in the training process")
        out["throughput_ratio_measured_eval_vs_sb3_same_settings"]["note"] = (
            "rlpipe with the evaluations as long as they were in the measured window (early in training, "
            "episodes end sooner)")
        out["throughput_ratio_training_only_vs_sb3_same_settings"]["note"] = (
            "rlpipe's rate with its periodic evaluation and checkpoint time taken out: the per-step cost of the "
            "pipeline alone")
    tr = results.get("transition")
    if tr:
        fig = tr["runner"]["transition_seconds"]
        out["transition_seconds_median"] = {"value": fig["median"], "unit": "s", "runs": fig["runs"],
                                            "what": "local runner, last step of session 1 to first step of 2"}
        full = (results.get("transfer") or {}).get("arms", {}).get("transfer", {}).get("transition_seconds_full_budget")
        if full and full.get("runs"):
            out["transition_seconds_median_full_budget"] = {
                "value": full["median"], "unit": "s", "runs": full["runs"],
                "what": "the same transition in the transfer runs (default budgets, two runs at a time), step-0 "
                        "transfer evaluation of a trained policy included"}
        cold = tr["cold_process"]["warm_started_session"]["spawn_to_first_step_seconds"]
        out["cold_process_first_step_seconds_median"] = {
            "value": cold["median"], "unit": "s", "runs": cold["runs"],
            "what": "python -m rlpipe.trainer, process spawn to first step of a warm-started session"}
    tf = results.get("transfer")
    if tf:
        out["transfer_vs_scratch_reward_ratio"] = {
            "value": tf["reward_ratio_transfer_vs_scratch"], "unit": "ratio of mean final eval reward",
            "runs": len(tf["arms"]["transfer"]["seeds"]), "seeds": tf["seeds"], "session": tf["session"],
            "budget_steps": tf["budget_steps"]}
        t, s = tf["arms"]["transfer"]["steps_to_threshold"], tf["arms"]["scratch"]["steps_to_threshold"]
        out["transfer_vs_scratch_steps_to_threshold_speedup"] = {
            "value": round(s["mean"] / t["mean"], 2) if t["mean"] and s["mean"] else None,
            "unit": "ratio of mean steps to reach the threshold (scratch / transfer)", "runs": t["runs"],
            "threshold": tf["threshold"],
            "reached": {"transfer": tf["arms"]["transfer"]["reached_threshold"],
                        "scratch": tf["arms"]["scratch"]["reached_threshold"]},
            "note": "over the seeds that reached the threshold in each arm"}
    je = (results.get("orchestration") or {}).get("job_end")
    if je:
        lengths = je["per_session_length"]
        out["cloud_end_to_next_create_seconds"] = {
            "value": je["worst_after_seconds"], "unit": "s (modelled, no AWS)", "runs": 1,
            "what": "from a training job's end to the next CreateTrainingJob on AWS with jobs ending by event, "
                    "worst of 15-min, 1-h and 24-h sessions, the warm pool Available at the first check",
            "per_length": {k: {"before": v["end_to_next_create_seconds"]["before"],
                               "after": v["end_to_next_create_seconds"]["after"]} for k, v in lengths.items()},
            "history_events_per_session": {k: v["history_events_per_session"] for k, v in lengths.items()},
            f"step_functions_usd_{je['sessions_in_run']}_sessions": {
                k: {b: v[f"step_functions_usd_{je['sessions_in_run']}_sessions"][b] for b in ("before", "after")}
                for k, v in lengths.items()},
            "lambda_durations": "handlers measured locally against moto; EventBridge delivery, SDK calls and "
                                "transitions assumed (orchestration.job_end.assumptions)"}
    sx = results.get("sbx")
    if sx:
        from bench.sbx import worst

        for key, name, what in (
                ("ratio_vs_sb3_defaults", "sbx_sac_throughput_ratio_vs_sb3_defaults",
                 "rlpipe SAC on the sbx backend (steady state) / SB3 SAC with SB3's defaults"),
                ("ratio_vs_sbx_same_settings", "sbx_sac_throughput_ratio_vs_sbx_same_settings",
                 "rlpipe SAC on the sbx backend (steady state) / plain SBX SAC with rlpipe's settings")):
            value, env_id = worst(sx["cases"], key)
            out[name] = {"value": value, "unit": "ratio of median env steps/s", "runs": len(sx["seeds"]),
                         "worst_case": f"sac on {env_id}" if env_id else None, "what": what,
                         "per_env": {c["env"]: c[key] for c in sx["cases"] if c["algorithm"] == "sac"}}
    gt = results.get("gates")
    if gt:
        sm = gt["summary"]
        common = {"runs": len(gt["seeds"]), "seeds": gt["seeds"], "config": gt["config"],
                  "stop_when": gt["stop_when"], "threshold_rule": gt["threshold_rule"],
                  "stopped_early": sm["stopped_early"]}
        out["gate_training_saved_fraction"] = {
            "value": sm["steps"]["saved_fraction"], "unit": "fraction of training env steps saved (1 - gated/ungated)",
            **common, "steps": {k: sm["steps"][k] for k in ("ungated", "gated")}}
        out["gate_wall_saved_fraction"] = {
            "value": sm["wall_seconds"]["saved_fraction"],
            "unit": "fraction of session wall time saved (1 - gated/ungated)", "runs": len(gt["seeds"]),
            "seconds": {k: sm["wall_seconds"][k] for k in ("ungated", "gated")}}
        out["gate_final_reward_ratio"] = {
            "value": sm["last_session_final_reward_ratio"],
            "unit": "ratio of mean final eval reward of the last session (gated / ungated)",
            "runs": len(gt["seeds"]), "session": sm["last_session"]}
    for key, item in out.items():
        if key in GOALS:
            op, bound = GOALS[key]
            item["goal"] = f"{op} {bound:g}"
            item["met"] = _met(key, item["value"])
    return out


# ---- plot -----------------------------------------------------------------------------------------------------

def throughput_plot(throughput: dict[str, Any], path: Path) -> None:
    """Median steps/s per case and variant (log scale), bars spanning min to max over repetitions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    variants = [("sb3_defaults", "(a) SB3 defaults", "tab:grey"),
                ("sb3_same_settings", "(b) SB3, rlpipe's settings", "tab:orange"),
                ("rlpipe_steady_state", "rlpipe (steady state, default eval/checkpoint)", "tab:blue"),
                ("rlpipe_in_process_steady_state", "rlpipe, in-process evaluation (steady state)", "tab:cyan"),
                ("raw_env", "(c) raw env", "tab:green")]
    cases = throughput["cases"]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    width = 0.8 / len(variants)
    x = np.arange(len(cases))
    for i, (key, label, colour) in enumerate(variants):
        med = np.array([c["steps_per_second"][key]["median"] or np.nan for c in cases], dtype=float)
        lo = np.array([c["steps_per_second"][key]["min"] or np.nan for c in cases], dtype=float)
        hi = np.array([c["steps_per_second"][key]["max"] or np.nan for c in cases], dtype=float)
        ax.bar(x + (i - (len(variants) - 1) / 2) * width, med, width, label=label, color=colour,
               yerr=[np.nan_to_num(med - lo), np.nan_to_num(hi - med)], capsize=2)
    ax.set_yscale("log")
    ax.set_xticks(x, [f"{c['algorithm'].upper()}\n{c['env']}" for c in cases], fontsize=8)
    ax.set_ylabel("env steps / s (median, log scale)")
    ax.set_title(f"Training throughput, {throughput['repetitions']} interleaved repetitions")
    ax.grid(axis="y", alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ---- markdown ---------------------------------------------------------------------------------------------------

def _n(v: Any, digits: int = 0) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return str(v)


def _fig(f: dict[str, Any], digits: int = 0) -> str:
    if not f or f.get("median") is None:
        return "–"
    return f"{_n(f['median'], digits)} ({_n(f['min'], digits)}–{_n(f['max'], digits)})"


def _pct_or_dash(v: float | None) -> str:
    return "–" if v is None else f"{v * 100:.0f} %"


def _mean_std(f: dict[str, Any], digits: int = 0) -> str:
    if not f or f.get("mean") is None:
        return "–"
    return f"{_n(f['mean'], digits)} ± {_n(f['std'], digits)}"


def _yes(met: bool | None) -> str:
    return {True: "**met**", False: "**not met**", None: "–"}[met]


def _machine(m: dict[str, Any]) -> list[str]:
    p = m["packages"]
    return [
        "| | |", "|---|---|",
        f"| CPU | {m['cpu_model']}, {m['logical_cores']} logical cores, {m['memory_gb']} GB RAM |",
        f"| OS | {m['os']} |",
        f"| Python | {m['python']} |",
        f"| torch / stable-baselines3 / gymnasium / mujoco | {p['torch']} / {p['stable-baselines3']} / "
        f"{p['gymnasium']} / {p['mujoco']} |",
        f"| torch default threads | {m['torch_default_threads']} |",
        f"| date (UTC) | {m['date']} |",
        f"| load average (1/5/15 min) at start → end | {m['load_average_at_start']} → "
        f"{m.get('load_average_at_end')} |",
    ]


def _headline_md(h: dict[str, Any]) -> list[str]:
    rows = ["| figure | value | runs | goal | |", "|---|---|---|---|---|"]
    for key, item in h.items():
        extra = f" (worst: {item['worst_case']})" if item.get("worst_case") else ""
        rows.append(f"| `{key}` | {_n(item['value'], 3)}{extra} | {item.get('runs')} | {item.get('goal', '–')} | "
                    f"{_yes(item.get('met'))} |")
    return rows


def _throughput_md(tp: dict[str, Any], plot: str | None) -> list[str]:
    st = tp["cases"][0]["rlpipe_settings"] if tp["cases"] else {}
    episodes, every = st.get("eval_episodes"), st.get("eval_every_steps") or 0
    ckpt, max_steps = st.get("checkpoint_every_steps") or 0, tp["cases"][0].get("max_episode_steps") or 0
    in_background = "; ".join(f"{c['algorithm'].upper()} on {c['env']}: "
                              f"{'yes' if c.get('rlpipe_background_eval') else 'no'}" for c in tp["cases"])
    out = [
        "## 1. Training throughput",
        "",
        "Env steps per second over the `learn()` phase only, measured the same way for every learning variant: a "
        "callback appended after all others opens a window at the start of training (SAC: at the first step that "
        "trains, after SB3's `learning_starts`=100) and closes it at the last step; imports and setup are outside. "
        f"Each measurement ran in a fresh process, interleaved (a, b, c, rlpipe, rlpipe in-process per env and "
        f"algorithm, {tp['repetitions']} repetitions); figures are medians (min–max).",
        "",
        "- **(a)** plain SB3 script with SB3's defaults: `ALGO(\"MlpPolicy\", env)`, torch's default threads;",
        "- **(b)** plain SB3 script with rlpipe's exact settings (n_envs, DummyVecEnv, VecNormalize, one torch "
        "thread, the same hyperparameters), no callbacks, no evaluation, no TensorBoard;",
        "- **(c)** the raw env stepped with random actions (one env, no learning);",
        "- **rlpipe**: `SessionTrainer` at its defaults on a generated session root: the default curriculum's "
        "first session with the env swapped (SAC: the schema's defaults for SAC — one env, SB3's SAC "
        f"hyperparameters — since the curriculum's hyperparameters are PPO's), evaluation ({episodes} episodes) "
        f"every {every:,} steps and checkpoints every {ckpt:,} steps as in `configs/pipeline.yaml`. When a window "
        "is shorter than three intervals, the trainer evaluates and checkpoints every third of the window and "
        "that measured time is priced back to one per default interval. Evaluation ran in the background worker "
        f"(`eval.background`'s default on this machine) for: {in_background}. "
        "**rlpipe in-process**: the same with `eval.background: false`.",
        "",
        "rlpipe's rate three ways: **steady state** (used for the ratios): with evaluation in the background, as "
        "measured (the training loop only hands over a snapshot and records the result, however long the "
        "episodes, while the worker's evaluations run beside it, every third of the window: more often than by "
        "default); in the training process, every evaluation episode runs the full "
        f"{max_steps:,} steps, as it does once a policy survives (evaluation time = {episodes} × {max_steps:,} "
        "steps at the measured evaluation rate). **eval as measured**: the evaluations as long as they were in "
        "the window (early in training episodes end sooner). **training only**: the time of evaluation and "
        "checkpoint calls on the training loop taken out. *Gradient updates* is the share of each window spent "
        "in the algorithm's `train()`.",
        "",
        "| algorithm | env | (a) SB3 defaults | (b) SB3, same settings | (c) raw env | rlpipe, steady state | "
        "rlpipe, eval as measured | rlpipe, training only | rlpipe in-process, steady state | rlpipe/(a) | "
        "rlpipe/(b) | rlpipe in-process/(b) | rlpipe/(c) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in tp["cases"]:
        r, s = c["ratios"], c["steps_per_second"]
        out.append(f"| {c['algorithm'].upper()} | {c['env']} | {_fig(s['sb3_defaults'])} | "
                   f"{_fig(s['sb3_same_settings'])} | {_fig(s['raw_env'])} | {_fig(s['rlpipe_steady_state'])} | "
                   f"{_fig(s['rlpipe_at_default_intervals'])} | {_fig(s['rlpipe_training_only'])} | "
                   f"{_fig(s.get('rlpipe_in_process_steady_state', {}))} | "
                   f"{_n(r['vs_sb3_defaults'], 2)} | {_n(r['vs_sb3_same_settings'], 3)} | "
                   f"{_n(r.get('in_process_eval_vs_sb3_same_settings'), 3)} | {_n(r['vs_raw_env'], 3)} |")
    out += ["", "Ratios are of medians; the same ratios paired within each repetition (median, min–max) and what "
            "rlpipe spends in its periodic work (rlpipe at its defaults):", "",
            "| algorithm | env | paired rlpipe/(a) | paired rlpipe/(b) | one evaluation on the training loop (s) | "
            "one evaluation in the worker (s) | env steps per evaluation | evaluation steps/s | "
            "one checkpoint (s) | gradient updates (a / b / rlpipe) | window (steps) | "
            "torch threads (a / b / rlpipe) | capped runs (a / b / c) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in tp["cases"]:
        p, th, cap = c["paired_ratios"], c["torch_threads"], c["capped_runs"]
        share = c.get("update_share", {})
        shares = " / ".join(_pct_or_dash(share.get(v, {}).get("median"))
                            for v in ("sb3_defaults", "sb3_same_settings", "rlpipe"))
        out.append(f"| {c['algorithm'].upper()} | {c['env']} | {_fig(p['sb3_defaults'], 2)} | "
                   f"{_fig(p['sb3_same_settings'], 3)} | {_fig(c.get('rlpipe_eval_seconds_on_loop', {}), 4)} | "
                   f"{_fig(c.get('rlpipe_worker_eval_seconds_each', {}), 2)} | "
                   f"{_n(c['rlpipe_eval_env_steps_each']['median'])} | {_fig(c['rlpipe_eval_steps_per_second'])} | "
                   f"{_fig(c['rlpipe_checkpoint_seconds_each'], 3)} | {shares} | {c['window_steps']:,} | "
                   f"{th.get('sb3_defaults')} / {th.get('sb3_same_settings')} / {th.get('rlpipe')} | "
                   f"{cap.get('sb3_defaults')} / {cap.get('sb3_same_settings')} / {cap.get('raw_env')} |")
    if plot:
        out += ["", f"![throughput]({plot})"]
    return out


def _transition_md(tr: dict[str, Any], tf: dict[str, Any] | None) -> list[str]:
    r, c = tr["runner"], tr["cold_process"]
    first, warm = c["first_session"], c["warm_started_session"]
    arm = (tf or {}).get("arms", {}).get("transfer", {})
    full = []
    if arm.get("transition_seconds_full_budget", {}).get("runs"):
        full = ["", f"The same transition at the default budgets (the transfer runs of section 3, two runs at a "
                f"time): {_fig(arm['transition_seconds_full_budget'], 3)} s over "
                f"{arm['transition_seconds_full_budget']['runs']} runs, of which the step-0 evaluation of the "
                f"transferred policy held up the first step for {_fig(arm['step_0_evaluation_seconds'], 3)} s "
                "(a session this long evaluates in the background worker, so the first step waits only for the "
                "hand-over of a snapshot; the tiny sessions above evaluate in process, where the tiny policy falls "
                "at once and the evaluation is nearly free)."]
    return [
        "## 2. Session transitions",
        "",
        f"**Local runner** ({r['what']}; {r['timesteps_per_session']:,} steps per session): from session 1's "
        "`ended_at` to session 2's `first_step_at` in `state.json`. Median (min–max) over "
        f"{r['transition_seconds']['runs']} runs.",
        "",
        "| part | seconds |", "|---|---|",
        f"| whole transition (`transition_seconds`) | {_fig(r['transition_seconds'], 3)} |",
        f"| finish session 1 (bundle, checkpoint, learning-curve PNG, state) | "
        f"{_fig(r['finish_previous_seconds'], 3)} |",
        f"| start session 2 (env, model, bundle load, step-0 transfer evaluation, first step) | "
        f"{_fig(r['start_next_seconds'], 3)} |",
        "",
        f"**Cold process** ({c['what']}). Median (min–max) over {c['transition_seconds']['runs']} runs.",
        "",
        "| | first session | warm-started session |", "|---|---|---|",
        f"| spawn → `main()` (interpreter, light imports) | {_fig(first['spawn_to_main_seconds'], 3)} | "
        f"{_fig(warm['spawn_to_main_seconds'], 3)} |",
        f"| `main()` → first step (torch/SB3 imports, env, model, bundle) | "
        f"{_fig(first['main_to_first_step_seconds'], 3)} | {_fig(warm['main_to_first_step_seconds'], 3)} |",
        f"| **spawn → first step** | {_fig(first['spawn_to_first_step_seconds'], 3)} | "
        f"{_fig(warm['spawn_to_first_step_seconds'], 3)} |",
        f"| last step → process exit | {_fig(first['last_step_to_exit_seconds'], 3)} | |",
        f"| transition with a process per session ({c['transition_definition']}) | | "
        f"{_fig(c['transition_seconds'], 3)} |",
        *full,
    ]


def _transfer_md(tf: dict[str, Any]) -> list[str]:
    t, s = tf["arms"]["transfer"], tf["arms"]["scratch"]
    out = [
        "## 3. Curriculum quality: transfer against scratch",
        "",
        f"`{tf['session']}` (`{tf['env']}`, {tf['algorithm'].upper()}), {tf['budget_steps']:,} steps in both arms, "
        f"seeds {tf['seeds']}. Transfer arm: the default curriculum (session 1: {tf['first_session_budget_steps']:,} "
        f"steps on the standing task), session 2 warm-started with handoff {tf['handoff']}. Scratch arm: the same "
        f"session with `use_previous_checkpoint: false`. Evaluation every {tf['eval_every_steps']:,} steps, "
        f"{tf['eval_episodes']} deterministic episodes. Threshold: **{tf['threshold']:g}** ({tf['threshold_meaning']}).",
        "",
        "| | transfer | scratch |", "|---|---|---|",
        f"| final eval reward, mean ± std | {_mean_std(t['final_eval_reward'], 1)} | "
        f"{_mean_std(s['final_eval_reward'], 1)} |",
        f"| best eval reward, mean ± std | {_mean_std(t['best_eval_reward'], 1)} | {_mean_std(s['best_eval_reward'], 1)} |",
        f"| steps to reach {tf['threshold']:g}, mean ± std (of seeds that reached it) | "
        f"{_mean_std(t['steps_to_threshold'])} | {_mean_std(s['steps_to_threshold'])} |",
        f"| seeds that reached it | {t['reached_threshold']} | {s['reached_threshold']} |",
    ]
    if "reward_at_step_0" in t:
        out.append(f"| eval reward at step 0 (before any training in the session) | "
                   f"{_mean_std(t['reward_at_step_0'], 1)} | – |")
        out.append(f"| session 1 final eval reward (standing task) | "
                   f"{_mean_std(t['first_session_final_eval_reward'], 1)} | – |")
    out += ["", f"Final-reward ratio transfer / scratch: **{_n(tf['reward_ratio_transfer_vs_scratch'], 3)}**.", "",
            "| seed | arm | final | best | steps to threshold | run wall time (s) |", "|---|---|---|---|---|---|"]
    for r in sorted(tf["runs"], key=lambda r: (r["seed"], r["kind"])):
        if "error" in r:
            out.append(f"| {r['seed']} | {r['kind']} | failed | | | {r.get('wall_seconds')} |")
            continue
        out.append(f"| {r['seed']} | {r['kind']} | {_n(r['final_eval_reward'], 1)} | {_n(r['best_eval_reward'], 1)} | "
                   f"{_n(r['steps_to_threshold'])} | {_n(r['wall_seconds'], 0)} |")
    if tf.get("plot"):
        out += ["", f"![transfer vs scratch]({tf['plot']})"]
    return out


def _orchestration_md(orch: dict[str, Any]) -> list[str]:
    if not orch.get("available"):
        return ["## 4. Orchestration cost on AWS (modelled)", "", f"Not measured: {orch.get('reason')}"]
    fit, model, est = orch["fit"], orch["aws_default_pipeline"], orch["transition_estimates"]
    out = [
        "## 4. Orchestration cost on AWS (modelled)",
        "",
        "The synthesized state machine executed on moto's ASL interpreter (`tests/sfn_harness.py`: real Lambda "
        "handlers, SageMaker stand-in with instant jobs). Counts from each execution's history: state transitions "
        "= `*StateEntered` events; Lambda invocations = `LambdaFunctionScheduled` events.",
        "",
        "| sessions | job-state events delivered | state transitions | Lambda invocations | history events |",
        "|---|---|---|---|---|",
    ]
    for r in orch["executions"]:
        out.append(f"| {r['sessions']} | {r.get('job_state_events_delivered', '–')} | {r['state_transitions']} | "
                   f"{r['lambda_invocations']} | {r['history_events']} |")
    sessions = "; ".join(f"{s['name']}: job ≈ {s['job_seconds']:g} s" for s in model["sessions"])
    out += [
        "",
        f"Fit: state transitions = {fit['state_transitions_fixed']:g} fixed + {fit['state_transitions_per_session']:g} "
        f"per session; history events = {fit['history_events_fixed']:g} fixed + "
        f"{fit['history_events_per_session']:g} per session; Lambda invocations by the state machine = "
        f"{fit['lambda_invocations_fixed']:g} fixed + {fit['lambda_invocations_per_session']:g} per session "
        "(a job's end arrives by event: none of these depends on a session's length).",
        "",
        f"**Default curriculum on AWS** ({sessions}; job length = the plan's training estimate + the startup of "
        "`rlpipe/data/prices.json`; Lambda invocations include one JobEvents call per job and the reconciliation "
        f"ticks every {model['pacing']['reconcile_every_minutes']:g} min while the run lasts):",
        "",
        "| | per pipeline run |", "|---|---|",
        f"| state transitions | {model['state_transitions']['value']} |",
        f"| Lambda invocations | {model['lambda_invocations']['value']} |",
        f"| Step Functions Standard ($0.025 / 1,000 transitions) | ${model['step_functions_usd']['value']:.4f} |",
        f"| Lambda ({model['lambda_usd']['assumption']}) | ${model['lambda_usd']['value']:.5f} |",
        f"| training, as the plan estimates it | ${_n(model['training_usd_estimated_by_plan']['value'], 4)} |",
        f"| orchestration share of the run's cost | {_n((model['orchestration_share_of_cost'] or 0) * 100, 2)} % |",
        "",
        f"Prices: {orch['prices']['source']}.",
        "",
        "**Transition between sessions on AWS (estimate)**: warm pool "
        f"**{est['warm_pool']['seconds']:g} s** against cold start **{est['cold_start']['seconds']:g} s**.",
        "",
        "| part | warm pool (s) | cold start (s) | source |", "|---|---|---|---|",
    ]
    parts = list(dict.fromkeys([*est["warm_pool"]["parts"], *est["cold_start"]["parts"]]))
    for p in parts:
        w, c = est["warm_pool"]["parts"].get(p), est["cold_start"]["parts"].get(p)
        src = (w or c)["source"]
        out.append(f"| {p.replace('_', ' ')} | {_n(w['seconds'], 1) if w else '–'} | "
                   f"{_n(c['seconds'], 1) if c else '–'} | {src} |")
    out += ["", f"See also {est['design_reference']}."]
    if orch.get("job_end"):
        out += ["", *_job_end_md(orch["job_end"])]
    return out


def _job_end_md(je: dict[str, Any]) -> list[str]:
    n = je["sessions_in_run"]
    out = [
        "### From a job's end to the next CreateTrainingJob (modelled, before/after)",
        "",
        "Every Wait state and task on the path from a training job's end to the next `CreateTrainingJob`, from the "
        "definition and the step code; Lambda tasks at the handler durations measured locally (median over the "
        "executions above), the rest at the assumptions below. Before: the Describe loop (waits "
        f"{je['before_pacing']['first_wait_seconds']} s doubling to {je['before_pacing']['max_wait_seconds']} s, "
        f"job = session + {je['before_pacing']['startup_seconds']} s startup). After: the job-state event. "
        f"The warm pool reads Available at the first CheckPool (one {je['pool_poll_seconds']} s WaitForPool); "
        "in brackets, when it already reads Available at RecordSession's describe.",
        "",
        f"| session | before (s) | after (s) | history events per session before → after | Step Functions, "
        f"{n} sessions before → after |",
        "|---|---|---|---|---|",
    ]
    for label, v in je["per_session_length"].items():
        d, h, c = v["end_to_next_create_seconds"], v["history_events_per_session"], \
            v[f"step_functions_usd_{n}_sessions"]
        out.append(f"| {label} | {_n(d['before'], 1)} ({_n(d['before_pool_available_at_record'], 1)}) | "
                   f"**{_n(d['after'], 1)}** ({_n(d['after_pool_available_at_record'], 1)}) | "
                   f"{h['before']} → {h['after']:g} | ${c['before']:.4f} → ${c['after']:.4f} |")
    first = next(iter(je["per_session_length"].values()))["paths"]["after"]["pool_available_at_first_check"]
    out += ["", f"Worst after: **{_n(je['worst_after_seconds'], 1)} s** ({je['worst_length_after']}); goal ≤ "
            f"{je['goal_seconds']:g} s.", "", "Path after, step by step:", "",
            "| step | kind | seconds |", "|---|---|---|"]
    out += [f"| {s['step']} | {s['kind']} | {_n(s['seconds'], 3)} |" for s in first["steps"]]
    out += ["", "Lambda handlers measured locally (median s, runs): " + ", ".join(
        f"{k} {v['median_seconds']:.4f} ({v['runs']})" for k, v in je["lambda_handler_seconds_measured"].items())
        + ".", "", "Assumptions: " + "; ".join(f"{k} = {v['value']:g} ({v['why']})"
                                              for k, v in je["assumptions"].items()) + "."]
    return out


def _sbx_md(sx: dict[str, Any]) -> list[str]:
    lines = [
        "## 5. The sbx backend (JAX)",
        "",
        f"SBX {sx['versions']['sbx']}, JAX {sx['versions']['jax']} (CPU). SAC: seeds {sx['seeds']}, one run per "
        f"seed and variant; CrossQ and the XLA thread comparison: seed 0. Window {sx['window_steps']:,} env steps, "
        f"opened after `learning_starts` (100) and {sx.get('warmup_steps', 0)} more steps for every variant (SBX "
        f"compiles its update at the first gradient step, once per process); order: {sx['order']}. "
        "(a) is cut off after 45 s like the baselines of section 1 (its rate stays exact). "
        "**(a)** SB3's SAC with SB3's defaults (`SAC(\"MlpPolicy\", env)`, torch's default threads); "
        "**(b-sbx)** a plain SBX script with rlpipe's exact settings (one env, VecNormalize, SBX's defaults, which "
        "are SB3's SAC hyperparameters, rlpipe's thread rule for torch and XLA), no callbacks; **rlpipe**: "
        "`SessionTrainer` with `backend: sbx`, evaluation and checkpoints every third of the window, priced "
        "back to the default intervals (steady state, as in section 1). Final reward: 5 deterministic episodes "
        "at the end of each run, same evaluation recipe and seed for every variant.",
        "",
        "| algorithm | env | (a) SB3 SAC defaults | (b-sbx) plain SBX | rlpipe sbx | rlpipe/(a) | paired rlpipe/(a) "
        "| rlpipe/(b-sbx) | paired rlpipe/(b-sbx) | gradient updates (a / b-sbx / rlpipe) | background eval "
        "| load (1 min) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in sx["cases"]:
        r, u = c["rates"], c["update_share"]
        lines.append(
            f"| {c['algorithm'].upper() if c['algorithm'] != 'crossq' else 'CrossQ'} | {c['env']} "
            f"| {_fig(r['sb3_defaults'], 1)} | {_fig(r['sbx_same_settings'], 1)} | {_fig(r['rlpipe_sbx'], 1)} "
            f"| {_n(c['ratio_vs_sb3_defaults'], 2)} | {_fig(c['paired_ratio_vs_sb3_defaults'], 2)} "
            f"| {_n(c['ratio_vs_sbx_same_settings'], 3)} | {_fig(c['paired_ratio_vs_sbx_same_settings'], 3)} "
            f"| {' / '.join(_pct_or_dash(u[v]['median']) for v in ('sb3_defaults', 'sbx_same_settings', 'rlpipe_sbx'))} "
            f"| {sum(c['background_eval'])}/{len(c['background_eval'])} | {_fig(c['load_average_1min'], 1)} |")
    lines += ["", "Final reward at equal steps (mean ± std over the seeds; (a) only from runs not cut off, which "
              "reached the same step count):", "",
              "| algorithm | env | (a) SB3 SAC defaults | (b-sbx) plain SBX | rlpipe sbx | rlpipe sbx, XLA's default "
              "threads | runs cut off ((a) / (b-sbx)) |", "|---|---|---|---|---|---|---|"]
    for c in sx["cases"]:
        f, cut = c["final_reward"], c.get("capped_runs", {})
        lines.append(f"| {c['algorithm']} | {c['env']} | {_mean_std(f['sb3_defaults'], 1)} "
                     f"| {_mean_std(f['sbx_same_settings'], 1)} | {_mean_std(f['rlpipe_sbx'], 1)} "
                     f"| {_mean_std(f.get('rlpipe_sbx_xla_multi', {}), 1)} "
                     f"| {cut.get('sb3_defaults', 0)} / {cut.get('sbx_same_settings', 0)} |")
    lines += ["", "XLA threads (seed 0): rlpipe on sbx with XLA's default thread pool, relative to one intra-op "
              "thread (the default on this machine):", "",
              "| algorithm | env | one XLA thread | XLA's default pool | ratio |", "|---|---|---|---|---|"]
    for c in sx["cases"]:
        if c.get("ratio_xla_multi_vs_single") is not None:
            r = c["rates"]
            lines.append(f"| {c['algorithm']} | {c['env']} | {_fig(c['xla_single_same_seeds'], 1)} "
                         f"| {_fig(r['rlpipe_sbx_xla_multi'], 1)} | {_n(c['ratio_xla_multi_vs_single'], 3)} |")
    if sx.get("notes"):
        lines += ["", *[f"- {n}" for n in sx["notes"]]]
    return lines


def _gates_md(gt: dict[str, Any]) -> list[str]:
    sm, names = gt["summary"], gt["sessions"]
    thresholds = gt["stop_when"]["at_least"]
    budgets = ", ".join(f"{n} {gt['budget_steps'][n]:,}" for n in names)
    lines = [
        "## 6. Early stopping: what a `stop_when` gate saves",
        "",
        f"The quickstart curriculum (`{gt['config']}`: {budgets} steps) over seeds {gt['seeds']}, run twice by the "
        f"local lineage driver (`rlpipe.lineages`, {gt['parallel']} lineages at a time, each a process with one "
        "torch thread, so one core each): **ungated**, every session trains its whole "
        f"budget; **gated**, every session has `stop_when: {{metric: {gt['stop_when']['metric']}, at_least: T, "
        f"for_evals: {gt['stop_when']['for_evals']}}}`. Both arms evaluate every {gt['eval_every_steps']:,} steps "
        f"({gt['eval_episodes']} episodes) instead of the quickstart's {gt['quickstart_eval_every_steps']:,}, so "
        "the gate has a grid to act on, and both evaluate in the training process (a gated session always does; "
        "`eval.background: false` in the ungated arm keeps the evaluation cost equal) and record no video. The "
        "ungated arm runs first, then the gated one, in the same conditions otherwise.",
        "",
        f"**Threshold T**: {gt['threshold_rule']}: the level a user who has run the quickstart once would call "
        "good enough. " + "; ".join(f"{n}: **T = {thresholds[n]:g}**" for n in names) + ". A second session "
        "warm-starts from the first session's bundle, which in the gated arm is the policy at the stop.",
        "",
        "| session | seed | T | steps ungated | steps gated | stop_step | wall s ungated | wall s gated "
        "| env steps/s ungated → gated | final eval reward ungated | final eval reward gated |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in gt["pairs"]:
        lines.append(
            f"| {p['session']} | {p['seed']} | {p['threshold']:g} | {p['steps']['ungated']:,} "
            f"| {p['steps']['gated']:,} | {format(p['stop_step'], ',') if p['stopped_early'] else '– (full budget)'} "
            f"| {_n(p['wall_seconds']['ungated'], 1)} | {_n(p['wall_seconds']['gated'], 1)} "
            f"| {_n(p['fps']['ungated'])} → {_n(p['fps']['gated'])} "
            f"| {_n(p['final_eval_reward']['ungated'], 1)} | {_n(p['final_eval_reward']['gated'], 1)} |")
    lines += ["", "| | stopped early | steps ungated → gated | steps saved | wall s ungated → gated | wall saved "
              "| mean final eval reward ungated → gated | ratio |", "|---|---|---|---|---|---|---|---|"]

    def row(label: str, part: dict[str, Any], stopped: str, rewards: dict[str, Any] | None,
            reward_ratio: float | None) -> str:
        st, wl = part["steps"], part["wall_seconds"]
        rw = (f"{_mean_std(rewards['ungated'], 1)} → {_mean_std(rewards['gated'], 1)}" if rewards else "–")
        return (f"| {label} | {stopped} | {st['ungated']:,.0f} → {st['gated']:,.0f} | "
                f"{_pct_or_dash(st['saved_fraction'])} | {wl['ungated']:,.0f} → {wl['gated']:,.0f} | "
                f"{_pct_or_dash(wl['saved_fraction'])} | {rw} | {_n(reward_ratio, 3)} |")

    for n in names:
        ps = sm["per_session"][n]
        lines.append(row(n, ps, ps["stopped_early"], ps["final_eval_reward"],
                         ps["final_reward_ratio_gated_vs_ungated"]))
    lines.append(row("**curriculum**", sm, sm["stopped_early"], None, sm["last_session_final_reward_ratio"]))
    aw = gt["arm_wall_seconds"]
    lines += [
        "",
        f"Training steps saved: **{_pct_or_dash(sm['steps']['saved_fraction'])}**; session wall time saved: "
        f"**{_pct_or_dash(sm['wall_seconds']['saved_fraction'])}** (each session's time in its lineage process, "
        f"start to bundle written); the arms end to end (lineage processes started and queued {gt['parallel']} at a "
        f"time): {aw['ungated']:,.0f} s → {aw['gated']:,.0f} s ({_pct_or_dash(aw.get('saved_fraction'))} saved). "
        f"The curriculum's final policy (session {sm['last_session']}) ends at "
        f"{_n(sm['last_session_final_reward_ratio'], 3)} × the ungated mean final evaluation reward. A gated "
        "session's final evaluation is the one at its stop step; an ungated one's is at the end of its budget. "
        "Mean ± std over seeds. Steps saved are exact; wall time also follows how fast each session trained "
        "(env steps/s above), which moves with what else ran: a lineage alone on the machine trains faster than "
        "two side by side or beside other work, and the gated arm's lineages overlap differently from the "
        "ungated arm's since they end sooner.",
    ]
    for n in names[1:]:
        s0 = sm["per_session"][n]["step0_eval_reward"]
        if s0["ungated"]["runs"] and s0["gated"]["runs"]:
            lines += ["", f"{n} is warm-started: the handed-over policy scored {_mean_std(s0['ungated'], 1)} "
                      f"(ungated) and {_mean_std(s0['gated'], 1)} (gated, the previous session stopped at its T) "
                      f"at its step-0 evaluation, and {sm['per_session'][n]['stopped_early']} of its gated runs "
                      "reached its own T for two evaluations in a row before the budget's end."]
    failed = [f"{arm} seed {f['seed']}: {f['status']}" for arm, fs in gt["failed_lineages"].items() for f in fs]
    if failed:
        lines += ["", "Lineages that did not complete (left out of the comparison): " + "; ".join(failed) + "."]
    return lines


def render_markdown(results: dict[str, Any], analysis: list[str] | None = None) -> str:
    """RESULTS.md: headline, machine, one section per benchmark, notes."""
    m = results["machine"]
    lines = [
        "# rlpipe benchmarks",
        "",
        f"`make bench{' QUICK=1' if results['mode'] == 'quick' else ''}` ({results['mode']} mode), "
        f"{m['date']}, {round(results['wall_seconds'] / 60, 1)} min wall time ("
        + ", ".join(f"{k} {v / 60:.1f} min" for k, v in results.get("section_wall_seconds", {}).items())
        + "). Machine-readable: [`results.json`](results.json).",
        "",
        "## Headline",
        "",
        *_headline_md(results["headline"]),
        "",
        "## Machine",
        "",
        *_machine(m),
        "",
        "Other work ran on this machine during the benchmark (see the load averages). Throughput runs were "
        "interleaved (a, b, c, rlpipe, rlpipe in-process, then the next repetition) so that neighbouring runs see "
        "the same background load and the ratios stay robust to it, while absolute rates move with the load.",
        "",
    ]
    if results.get("merged_sections"):
        again = ", ".join(f"{x['section']} ({x['date']}, source {x.get('source_sha256', '?')})"
                          for x in results["merged_sections"])
        lines += [f"Sections run again later, on a newer tree, and merged into these results: {again}. The other "
                  f"sections come from the first run (source {m.get('source_sha256', 'not recorded')}).", ""]
    if analysis:
        lines += ["## What limits the goals that are not met", "", *analysis, ""]
    if results.get("throughput"):
        lines += [*_throughput_md(results["throughput"], results["throughput"].get("plot")), ""]
    if results.get("transition"):
        lines += [*_transition_md(results["transition"], results.get("transfer")), ""]
    if results.get("transfer"):
        lines += [*_transfer_md(results["transfer"]), ""]
    if results.get("orchestration"):
        lines += [*_orchestration_md(results["orchestration"]), ""]
    if results.get("sbx"):
        lines += [*_sbx_md(results["sbx"]), ""]
    if results.get("gates"):
        lines += [*_gates_md(results["gates"]), ""]
    if results.get("budgets_notes"):
        lines += ["## Budgets", "", *[f"- {n}" for n in results["budgets_notes"]], ""]
    return "\n".join(lines)
