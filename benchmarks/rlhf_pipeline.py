"""The RLHF pipeline on the embedded movie-sentiment preset, as `make rlhf` runs it: `tunelab rlhf pipeline`, timed,
with issue 6's bars checked on its report.

Bars: the whole pipeline under 45 minutes on this machine; the reward model's pairwise accuracy on held-out
human-rated pairs >= 0.85; PPO raises the mean reward over SFT, keeps the mean KL to SFT under its target, and wins
>= 70 % against SFT by the VADER judge. DPO's row is reported beside PPO's, and the SFT policy's perplexity of each
policy's samples is the fluency check. One run (one seed): the win rate's standard error on 256 prompts is about
3 points.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common import TUNELAB, log, machine, main_for, read_json, run_timed, working_folder, write_result

NAME = "rlhf_pipeline"
BUDGET_S = 45 * 60


def bars(report: dict[str, Any], wall_s: float) -> dict[str, bool]:
    sft, ppo = report["policies"]["sft"], report["policies"]["ppo"]
    return {"pipeline under 45 minutes": wall_s < BUDGET_S,
            "reward model pairwise accuracy >= 0.85": report["stages"]["reward"]["test"]["pairwise_accuracy"] >= 0.85,
            "PPO raises the mean reward over SFT": ppo["reward"] > sft["reward"],
            "PPO's mean KL to SFT under its target": ppo["kl"] < report["target_kl"],
            "PPO wins >= 70% against SFT by VADER": ppo["vader_win_rate"] >= 0.70}


def run_benchmark(repeats: int = 1, quick: bool = False, keep: bool = False) -> dict[str, Any]:
    """`repeats` is ignored: one pipeline takes most of the 45 minutes it is allowed."""
    quick_options = ["--sft-examples", "64", "--ppo-iterations", "2", "--dpo-pairs", "32", "--judge-prompts",
                     "16"] if quick else []
    with working_folder(NAME, keep) as folder:
        output = folder / "rlhf"
        timed = run_timed([TUNELAB, "rlhf", "pipeline", "--output", str(output), "--quiet", *quick_options],
                          folder / "pipeline.log")
        report = read_json(output / "report.json")
        settings = (Path(output) / "pipeline.yaml").read_text(encoding="utf-8")
    verdicts = bars(report, timed.wall_s)
    for name, row in report["policies"].items():
        log(f"{NAME}: {name}: reward {row['reward']:+.3f}, KL {row['kl']:.2f}, SFT perplexity "
            f"{row['reference_perplexity']:.1f}, VADER {row['vader']:+.3f}, win vs SFT {row['vader_win_rate']}")
    result = {"benchmark": NAME, "quick": quick, "machine": machine(), "wall_s": timed.wall_s,
              "peak_rss_bytes": timed.peak_rss_bytes, "pipeline_yaml": settings, "bars": verdicts, "report": report}
    path = write_result(NAME, result, quick)
    log(f"{NAME}: wrote {path}")
    return result


if __name__ == "__main__":
    main_for(run_benchmark, __doc__, default_repeats=1, quick_help="tiny stages (minutes; figures mean nothing)")
