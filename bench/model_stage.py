"""Model-stage throughput of every engine x precision x batch size, and its accuracy vs eager fp32.

Times only the model (the float32 normalised batch in, logits and features out), warm-up
excluded, best of --rounds interleaved rounds, so a burst of load from another process
costs one round, not a row. Each row also reports the minimum embedding cosine and the
top-1 agreement against eager fp32 over the photos in images/, and the throughput when
torch normalises a uint8 batch before every call, as Pipeline.infer does. A result taken
while other processes used the CPU understates the engine and is starred. The registry's
default engine per architecture (ModelSpec.engine) is chosen from this table.

Example (about 4 minutes on 2 cores):
    .venv/bin/python bench/model_stage.py --json model_stage.json
    .venv/bin/python bench/model_stage.py --models resnet18 --batches 16 --rounds 1
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from devtools import IMAGES
from devtools.machine import machine
from devtools.processes import own_and_machine_cpu_seconds
from imgsim.engines import ENGINES, PRECISIONS, Engine, make_engine, supported
from imgsim.models import EmbeddingNet, ModelSpec, get_spec, load_model
from imgsim.preprocess import crop_uint8, normalize

PIPELINE_BATCH = 16  # the batch size at which the "+normalise" column is taken
BUSY = 0.25  # cores used by other processes above which a result is starred as contended


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load(name: str) -> tuple[ModelSpec, EmbeddingNet]:
    spec = get_spec(name)
    packaged = spec.packaged_weights()
    if packaged is not None:  # the weights ship with a package: use the real ones
        return spec, load_model(spec, packaged)
    torch.manual_seed(0)  # published weights need a download; random ones time the same
    return spec, spec.build().eval()


def photos(spec: ModelSpec) -> torch.Tensor:
    files = sorted(p for p in IMAGES.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    return normalize(torch.stack([crop_uint8(Image.open(p).convert("RGB"), spec) for p in files]), spec)


def gflop_per_image(model: EmbeddingNet, spec: ModelSpec) -> float:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, spec.input_size, spec.input_size))
    return counter.get_total_flops() / 1e9


def throughput(run: Callable[[], object], batch: int, seconds: float) -> dict[str, float]:
    """Images per second over at least ``seconds`` and 2 calls; and the cores used by us and others."""
    (ours0, all0), start, calls = own_and_machine_cpu_seconds(), time.perf_counter(), 0
    while calls < 2 or time.perf_counter() - start < seconds:
        run()
        calls += 1
    wall = time.perf_counter() - start
    ours, total = own_and_machine_cpu_seconds()
    ours, others = (ours - ours0) / wall, max(0.0, (total - all0 - ours + ours0) / wall)
    return {"img_s": calls * batch / wall, "cores": ours, "others": others}


def build_engines(spec: ModelSpec, model: EmbeddingNet) -> dict[str, Engine]:
    engines: dict[str, Engine] = {}
    for kind in ENGINES:
        for precision in PRECISIONS:
            if not supported(kind, "cpu", precision):
                continue
            start = time.perf_counter()
            engines[f"{kind}/{precision}"] = make_engine(kind, copy.deepcopy(model), spec, "cpu", precision)
            log(f"  {spec.name} {kind}/{precision}: ready in {time.perf_counter() - start:.1f} s")
    return engines


def accuracy(engine: Engine, x: torch.Tensor, ref: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
    logits, features = engine(x)
    cosine = torch.nn.functional.cosine_similarity(features, ref[1], dim=1).min().item()
    agree = (logits.argmax(1) == ref[0].argmax(1)).float().mean().item()
    return {"cosine_min": cosine, "top1_agree": agree}


def bench_model(name: str, batches: list[int], rounds: int, seconds: float) -> list[dict]:
    spec, model = load(name)
    gflop = gflop_per_image(model, spec)
    real = photos(spec)
    with torch.inference_mode():
        ref = model(real)
    engines = build_engines(spec, model)
    inputs = {b: torch.randn(b, 3, spec.input_size, spec.input_size) for b in set(batches) | {PIPELINE_BATCH}}
    pixels = torch.randint(0, 256, (PIPELINE_BATCH, 3, spec.input_size, spec.input_size), dtype=torch.uint8)
    rows = {label: {"model": name, "engine": label, "gflop_per_image": gflop, **accuracy(e, real, ref), "batches": {}}
            for label, e in engines.items()}  # fmt: skip
    for engine in engines.values():  # warm-up: the first call at a new batch size plans memory
        for x in inputs.values():
            engine(x)
    for r in range(rounds):
        log(f"  {name}: round {r + 1}/{rounds}")
        for label, engine in engines.items():
            for b in batches:
                sample = throughput(lambda e=engine, x=inputs[b]: e(x), b, seconds)
                rows[label]["batches"].setdefault(b, []).append(sample)
            piped = throughput(lambda e=engine: e(normalize(pixels, spec)), PIPELINE_BATCH, seconds)
            rows[label].setdefault("with_normalise", []).append(piped)
    return [summarise(row) for row in rows.values()]


def summarise(row: dict) -> dict:
    def best(samples: list[dict]) -> dict:
        top = max(samples, key=lambda s: s["img_s"])
        return {"img_s": top["img_s"], "img_s_median": statistics.median(s["img_s"] for s in samples),
                "cores": top["cores"], "others": top["others"], "rounds": samples}  # fmt: skip

    row["batches"] = {b: best(samples) for b, samples in row["batches"].items()}
    row["with_normalise"] = best(row["with_normalise"])
    peak = max(row["batches"].values(), key=lambda s: s["img_s"])
    row["gflop_s"] = peak["img_s"] * row["gflop_per_image"]
    return row


def machine_info() -> dict:
    """The machine, the threads and the engine versions, as the JSON records them."""
    import onnxruntime
    import openvino

    here = machine()
    return {"cpu": here.cpu, "cpus": here.cores, "torch_threads": torch.get_num_threads(),
            "isa": [f for f in ("avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16") if f in here.flags],
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "openvino": openvino.__version__.split("-")[0], "python": here.python}  # fmt: skip


def cell(sample: dict) -> str:
    """img/s, starred when other processes took more than a quarter core during the best round."""
    return f"{sample['img_s']:.1f}" + ("*" if sample["others"] > BUSY else "")


def table(results: list[dict], batches: list[int]) -> str:
    head = ["model", "engine/precision"] + [f"b={b}" for b in batches]
    head += [f"+normalise b={PIPELINE_BATCH}", "GFLOP/s", "cos min", "top-1"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [r["model"], r["engine"]] + [cell(r["batches"][b]) for b in batches] + [cell(r["with_normalise"])]
        cells += [f"{r['gflop_s']:.0f}", f"{r['cosine_min']:.6f}", f"{r['top1_agree']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet18,efficientnet_lite0", help="comma-separated architectures")
    parser.add_argument("--batches", default="1,8,16,32,64", help="comma-separated batch sizes")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best is reported")
    parser.add_argument("--seconds", type=float, default=0.7, help="minimum time per measurement")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (ONNX Runtime follows)")
    parser.add_argument("--json", type=Path, help="also write every sample here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    about = machine_info()
    results = []
    for name in args.models.split(","):
        log(f"{name}: building engines")
        results += bench_model(name, batches, args.rounds, args.seconds)
    print(f"## Model stage, {about['cpu']}, {about['cpus']} CPUs ({' '.join(about['isa'])}), "
          f"{args.threads} threads, torch {about['torch']}, onnxruntime {about['onnxruntime']}, "
          f"openvino {about['openvino']}\n")  # fmt: skip
    print(f"img/s at 224 px, best of {args.rounds} rounds (* other processes used > {BUSY} core meanwhile: "
          f"rerun on a quiet machine); GFLOP/s at the best batch; cos min and top-1 agreement vs eager fp32 "
          f"on {IMAGES.name}/\n")  # fmt: skip
    print(table(results, batches))
    if args.json:
        args.json.write_text(json.dumps({"machine": about, "args": vars(args) | {"json": str(args.json)},
                                         "results": results}, indent=1))  # fmt: skip
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
