"""`tunelab export --onnx` on a real run: the ONNX model's logits against the run's, and its latency per example
at batch size 1 in onnxruntime against PyTorch's (the merged model), over 3 exports of the same run.

The run is MiniLM + LoRA on 512 movie-snippets examples for one epoch: what is measured is the export, not the
training.
"""

from __future__ import annotations

from typing import Any

from common import TUNELAB, log, machine, main_for, median, read_json, run_timed, working_folder, write_result

NAME = "onnx_export"
TOLERANCE = 1e-4


def run_benchmark(repeats: int = 3, quick: bool = False, keep: bool = False) -> dict[str, Any]:
    rows = []
    with working_folder(NAME, keep) as folder:
        run = folder / "lora"
        run_timed([TUNELAB, "train", "--model", "minilm", "--strategy", "lora", "--limit-train", "512", "--epochs",
                   "1", "--limit-eval", "200", "--output", str(run), "--quiet"], folder / "train.log")
        for repeat in range(1 if quick else repeats):
            export = folder / f"export-{repeat}"
            timed = run_timed([TUNELAB, "export", str(run), "--onnx", "--output", str(export)],
                              folder / f"export-{repeat}.log")
            report = read_json(export / "tunelab_export.json")
            latency = report["latency_ms_per_example"]
            rows.append({"onnx_max_logit_difference": report["onnx_max_logit_difference"],
                         "merged_max_logit_difference": report["max_logit_difference"], **latency,
                         "onnx_vs_pytorch": latency["onnx"] / latency["merged"], "export_wall_s": timed.wall_s})
            log(f"{NAME}: export {repeat + 1}: |diff| {rows[-1]['onnx_max_logit_difference']:.1e}, onnx "
                f"{latency['onnx']:.2f} ms vs pytorch {latency['merged']:.2f} ms per example")
    summary = {"onnx_max_logit_difference": max(row["onnx_max_logit_difference"] for row in rows),
               "onnx_ms_per_example": median([row["onnx"] for row in rows]),
               "pytorch_ms_per_example": median([row["merged"] for row in rows]),
               "onnx_vs_pytorch": median([row["onnx_vs_pytorch"] for row in rows]),
               "export_wall_s": median([row["export_wall_s"] for row in rows])}
    bars = {"onnx_logits_within_1e-4": summary["onnx_max_logit_difference"] <= TOLERANCE}
    result = {"benchmark": NAME, "quick": quick, "repeats": len(rows), "machine": machine(), "summary": summary,
              "bars": bars, "pass": all(bars.values()), "rows": rows}
    log(f"{NAME}: wrote {write_result(NAME, result, quick)}")
    return result


if __name__ == "__main__":
    main_for(run_benchmark, __doc__.splitlines()[0], 3, "one export")
