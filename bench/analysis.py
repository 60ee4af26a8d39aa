"""Why a goal is not met, in numbers taken from the results (no figure here is typed in by hand)."""

from __future__ import annotations

from typing import Any

from bench.report import GOALS


def _pct(x: float) -> str:
    return f"{x * 100:.0f} %"


def _throughput_same_settings(tp: dict[str, Any]) -> list[str]:
    lines = []
    bound = GOALS["throughput_ratio_vs_sb3_same_settings"][1]
    for c in tp["cases"]:
        r = c["ratios"]
        if r["vs_sb3_same_settings"] is None or r["vs_sb3_same_settings"] >= bound:
            continue
        s = c["steps_per_second"]
        b = s["sb3_same_settings"]["median"]
        if not b or r["training_only_vs_sb3_same_settings"] is None:
            continue
        st = c["rlpipe_settings"]
        text = (f"- **{c['algorithm'].upper()} on {c['env']}**: rlpipe/(b) = {r['vs_sb3_same_settings']:.3f} in "
                f"steady state. Without its periodic work rlpipe runs at "
                f"{r['training_only_vs_sb3_same_settings']:.3f} of (b)")
        loop, ck = c.get("rlpipe_eval_seconds_on_loop", {}).get("median"), \
            c["rlpipe_checkpoint_seconds_each"]["median"]
        if c.get("rlpipe_background_eval"):
            worker = c.get("rlpipe_worker_eval_seconds_each", {}).get("median")
            text += (f"; evaluations ran in the background worker and cost the training loop {loop or 0:.4f} s "
                     f"each, a checkpoint {ck or 0:.3f} s, every {st['eval_every_steps']:,} steps, which (b) "
                     f"trains in {st['eval_every_steps'] / b:.1f} s. What remains is the training itself running "
                     f"slower while the worker evaluates beside it (one evaluation took the worker "
                     f"{worker or 0:.2f} s, every third of the window) and the noise of this shared machine")
            in_proc = r.get("in_process_eval_vs_sb3_same_settings")
            if in_proc is not None:
                text += f"; with evaluation in the training process rlpipe reached {in_proc:.3f} of (b)"
            text += "."
        else:
            steady, only = s["rlpipe_steady_state"]["median"], s["rlpipe_training_only"]["median"]
            share = 1 - steady / only if steady and only else None
            ev_rate = c["rlpipe_eval_steps_per_second"]["median"]
            if share is not None and ev_rate and c.get("max_episode_steps"):
                full = st["eval_episodes"] * c["max_episode_steps"] / ev_rate
                text += (f"; evaluation and checkpoints take {_pct(share)} of its time: one evaluation of "
                         f"{st['eval_episodes']} deterministic full-length episodes "
                         f"({st['eval_episodes'] * c['max_episode_steps']:,} env steps at {ev_rate:,.0f} steps/s) "
                         f"takes {full:.1f} s and one checkpoint {ck or 0:.3f} s, every "
                         f"{st['eval_every_steps']:,} steps, which (b) trains in {st['eval_every_steps'] / b:.1f} s"
                         " (evaluation ran in the training process: no core to spare)")
            text += "."
        lines.append(text)
    return lines


def _throughput_defaults(tp: dict[str, Any], cores: int | None) -> list[str]:
    lines = []
    bound = GOALS["throughput_ratio_vs_sb3_defaults"][1]
    for c in tp["cases"]:
        r, s = c["ratios"], c["steps_per_second"]
        if r["vs_sb3_defaults"] is None or r["vs_sb3_defaults"] >= bound:
            continue
        a, b = s["sb3_defaults"]["median"], s["sb3_same_settings"]["median"]
        if not a or not b:
            continue
        text = (f"- **{c['algorithm'].upper()} on {c['env']}**: rlpipe/(a) = {r['vs_sb3_defaults']:.2f}; "
                f"even the plain script with rlpipe's settings (b) reaches only {b / a:.2f}× SB3's defaults (a)")
        threads = "/".join(str(t) for t in c["torch_threads"].get("sb3_defaults", [])) or "?"
        ours = "/".join(str(t) for t in c["torch_threads"].get("sb3_same_settings", [])) or "?"
        same_work = not c["rlpipe_settings"]["hyperparameters"]
        if same_work:
            text += (". rlpipe's defaults for this algorithm are SB3's own hyperparameters, so the work per env "
                     "step is the same; what differs is VecNormalize")
            if ours != threads:
                text += f" and {ours} torch thread(s) instead of {threads}"
        share = c.get("update_share", {}).get("sb3_same_settings", {}).get("median")
        if share and b / a / share < bound:
            text += (f". Gradient updates take {_pct(share)} of (b)'s time: with env stepping and everything "
                     f"else free, (b) would still reach only {b / a / share:.2f}× (a). More needs fewer gradient "
                     "updates per env step, which trades sample efficiency for speed")
            if same_work:
                text += "; the defaults keep SB3's update-to-data ratio"
        lo, hi = s["sb3_defaults"]["min"], s["sb3_defaults"]["max"]
        text += (f". (a) ranged {lo:,.0f}–{hi:,.0f} steps/s over the repetitions, (b) "
                 f"{s['sb3_same_settings']['min']:,.0f}–{s['sb3_same_settings']['max']:,.0f}")
        stalled = [name for name, key, med in (("(a)", "sb3_defaults", a), ("(b)", "sb3_same_settings", b))
                   if s[key]["min"] is not None and s[key]["min"] < 0.5 * med]
        if stalled:
            text += (f": {' and '.join(stalled)} slowed to under half its median in a repetition; with more than "
                     f"one torch thread on {cores} cores, training stalls whenever another process holds a core")
        text += "."
        lines.append(text)
    return lines


def explain(results: dict[str, Any]) -> list[str]:
    """Bullet lines for each headline goal that is not met."""
    h = results.get("headline", {})
    lines: list[str] = []
    tp = results.get("throughput")
    if tp and h.get("throughput_ratio_vs_sb3_same_settings", {}).get("met") is False:
        lines += ["**Overhead against the same settings (goal rlpipe/(b) ≥ 0.97).**", "",
                  *_throughput_same_settings(tp), ""]
    if tp and h.get("throughput_ratio_vs_sb3_defaults", {}).get("met") is False:
        cores = results["machine"].get("logical_cores")
        lines += ["**Against SB3's defaults (goal rlpipe/(a) ≥ 1.5).**", "", *_throughput_defaults(tp, cores), ""]
    tr = h.get("transition_seconds_median")
    if tr and tr.get("met") is False:
        r = results["transition"]["runner"]
        lines += [f"**Transition (goal ≤ 2 s)**: median {tr['value']:.2f} s; finishing the previous session takes "
                  f"{r['finish_previous_seconds']['median']:.2f} s and starting the next "
                  f"{r['start_next_seconds']['median']:.2f} s (median).", ""]
    full = h.get("transition_seconds_median_full_budget")
    if full and full.get("met") is False:
        arm = results["transfer"]["arms"]["transfer"]
        ev = arm.get("step_0_evaluation_seconds", {}).get("median")
        lines += [f"**Transition at the default budgets (goal ≤ 2 s)**: median {full['value']:.2f} s over "
                  f"{full['runs']} runs" + (f", of which {ev:.2f} s is the step-0 evaluation of the transferred "
                                            "policy (its episodes now last long)" if ev is not None else "") +
                  "; two runs shared the 2 cores at the time.", ""]
    return lines
