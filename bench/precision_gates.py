"""The gates an engine or lower precision must pass before an architecture runs it by default.

Every CPU engine x precision (onnxruntime fp32, openvino fp32, openvino bf16) is compared
with eager fp32, the reference, on what users see:

- embedding cosine vs eager fp32 on the noisy camera corpus (devtools/photos.py), decoded
  as the pipeline decodes: gate median >= 0.9999 and min >= 0.999;
- precision@10 on labelled clip-art (Debian openclipart-png, one class per folder): for every
  image, the share of its 10 nearest neighbours by cosine (itself left out) of its class,
  averaged; gate: not lower than eager fp32's by more than 0.005;
- near-duplicate group F1 of the shipped thresholds (client/duplicates CALIBRATED) on the
  dedup calibration corpus (bench/dedup_calibration.py), embedded in-process by the server's
  pipeline; gate: not lower than eager fp32's by more than 0.002. Only for architectures
  with calibrated thresholds;
- not a gate: model-stage img/s vs onnxruntime fp32 (batch 32, --threads threads).

An engine that passes every gate may become an architecture's default (``engine``,
``precision``, ``chosen_by`` in handler/imgsim/models.py; docs/ENGINES.md has the table).
ResNet18's published weights cannot be downloaded here: it runs seeded random weights
(--weights resnet18=FILE for the real ones), which test numerics but not learned features.

Exits 1 when an architecture's registry default fails a gate.

Examples:
    .venv/bin/python bench/precision_gates.py --setup --write-docs --json gates.json   # the documented run, ~15 min on 2 cores
    .venv/bin/python bench/precision_gates.py --arch efficientnet_lite0 --photos 16 --labelled-per-class 10 --skip-dedup
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
import time
from pathlib import Path

import torch

from devtools import REPO
from devtools.gates import (
    CLASSES,
    COSINE_MEDIAN,
    COSINE_MIN,
    F1_TOLERANCE,
    P_AT_K,
    P_AT_K_TOLERANCE,
    REFERENCE,
    cosine_gate,
    crops,
    features,
    gate_failures,
    labelled_set,
    load,
    noisy_photos,
    precision_at_k,
)  # fmt: skip
from devtools.machine import machine
from devtools.processes import own_and_machine_cpu_seconds

DOCS = REPO / "docs" / "ENGINES.md"
BEGIN, END = "<!-- gates:begin -->", "<!-- gates:end -->"
TIMED_BATCH, BUSY = 32, 0.25


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- one architecture ----------------------------------------------------------------------------


def candidates() -> list[tuple[str, str]]:
    """Every CPU engine x precision but the reference."""
    from imgsim.engines import ENGINES, PRECISIONS, supported

    return [(k, p) for k in ENGINES for p in PRECISIONS if supported(k, "cpu", p) and (k, p) != REFERENCE]


def timed(engine, x: torch.Tensor, seconds: float) -> dict:
    """img/s over at least ``seconds`` and 2 calls, and the cores other processes used meanwhile."""
    (ours0, all0), start, calls = own_and_machine_cpu_seconds(), time.perf_counter(), 0
    while calls < 2 or time.perf_counter() - start < seconds:
        engine(x)
        calls += 1
    wall = time.perf_counter() - start
    ours, total = own_and_machine_cpu_seconds()
    return {"img_s": calls * len(x) / wall, "others": max(0.0, (total - all0 - (ours - ours0)) / wall)}


def speeds(engines: dict, spec, rounds: int, seconds: float) -> dict:
    """Best of ``rounds`` interleaved rounds per engine: a burst of load elsewhere costs a round, not a row."""
    x = torch.randn(TIMED_BATCH, 3, spec.input_size, spec.input_size)
    for engine in engines.values():
        engine(x)  # the first call at a new batch size plans memory
    samples: dict = {label: [] for label in engines}
    for _ in range(rounds):
        for label, engine in engines.items():
            samples[label].append(timed(engine, x, seconds))
    return {label: max(s, key=lambda r: r["img_s"]) for label, s in samples.items()}


def gate_arch(arch: str, weights: Path | None, photos: list[Path], labelled: tuple[list[Path], list[str]],
              decoded: dict, args: argparse.Namespace) -> list[dict]:  # fmt: skip
    """The rows of ``arch``'s candidates; ``decoded`` keeps the crops for the next architecture of the same sizes."""
    from imgsim.engines import make_engine
    from imgsim.pipeline import PipelineConfig, engine_choice

    spec, model, weights_note = load(arch, weights)
    default = engine_choice(PipelineConfig(), spec, torch.device("cpu"))
    sizes = (spec.resize_size, spec.input_size)
    if sizes not in decoded:
        log(f"{arch}: decoding {len(photos)} camera photos and {len(labelled[0])} clip-art images ...")
        decoded[sizes] = crops(photos, spec), crops(labelled[0], spec)
    photo_pixels, clip_pixels = decoded[sizes]
    engines = {}
    for kind, precision in [REFERENCE, *candidates()]:
        started = time.perf_counter()
        engines[(kind, precision)] = make_engine(kind, copy.deepcopy(model), spec, "cpu", precision)
        log(f"  {arch} {kind}/{precision}: ready in {time.perf_counter() - started:.1f} s")
    log(f"{arch}: embedding with every engine ...")
    vectors = {key: (features(e, photo_pixels, spec), features(e, clip_pixels, spec)) for key, e in engines.items()}
    log(f"{arch}: timing the model stage at batch {TIMED_BATCH}, {args.rounds} x {args.seconds} s per engine ...")
    timing = speeds({key: e for key, e in engines.items() if key != REFERENCE}, spec, args.rounds, args.seconds)
    ran = {key: e.precision for key, e in engines.items()}
    del engines
    f1 = dedup_f1(arch, weights, [REFERENCE, *candidates()], args) if not args.skip_dedup else None
    reference_p = precision_at_k(vectors[REFERENCE][1], labelled[1])
    base = timing[("onnxruntime", "fp32")]["img_s"]
    rows = []
    for key in candidates():
        cosine = cosine_gate(vectors[REFERENCE][0], vectors[key][0])
        p = (reference_p, precision_at_k(vectors[key][1], labelled[1]))
        f = (f1[REFERENCE], f1[key]) if f1 else None
        failures = gate_failures(cosine, p, f)
        rows.append({
            "arch": arch, "engine": key[0], "precision": key[1], "ran": ran[key], "registry_default": key == default,
            "weights": weights_note, "cosine_median": cosine["median"], "cosine_min": cosine["min"],
            "p_at_10": {"fp32": p[0], "candidate": p[1]}, "dedup_f1": {"fp32": f[0], "candidate": f[1]} if f else None,
            "dedup_note": None if f else dedup_note(arch, args), "img_s": timing[key]["img_s"],
            "img_s_onnxruntime_fp32": base, "img_s_ratio": timing[key]["img_s"] / base,
            "contended": timing[key]["others"] > BUSY, "pass": not failures, "failures": failures,
        })  # fmt: skip
    if default == REFERENCE:
        rows.append({"arch": arch, "engine": "eager", "precision": "fp32", "registry_default": True, "reference": True})
    return rows


def dedup_note(arch: str, args: argparse.Namespace) -> str:
    from client.duplicates import CALIBRATED

    if args.skip_dedup:
        return "not taken (--skip-dedup)"
    return "no calibrated thresholds (CALIBRATED) for this architecture" if arch not in CALIBRATED else ""


# --- near-duplicate F1 ---------------------------------------------------------------------------


def _dedup_calibration():
    """bench/dedup_calibration.py, whether this file runs as a script or is imported as bench.precision_gates."""
    try:
        import dedup_calibration
    except ModuleNotFoundError:
        from bench import dedup_calibration
    return dedup_calibration


def dedup_f1(arch: str, weights: Path | None, configs: list[tuple[str, str]], args: argparse.Namespace) -> dict | None:
    """Group F1 of the shipped thresholds per (engine, precision), on the calibration corpus; None when uncalibrated."""
    from client.duplicates import CALIBRATED
    from client.duplicates.phash import phash_file
    from devtools.photos import same_photo_of, scene_of

    shipped = CALIBRATED.get(arch)
    if shipped is None:
        log(f"{arch}: no calibrated near-duplicate thresholds: the dedup F1 gate is not taken")
        return None
    calibration = _dedup_calibration()
    folder, truth = calibration.calibration_corpus(args.seed)  # the calibration's own corpus, shared with it
    files = [r.file for r in truth]
    names = sorted({r.photo for r in truth})
    same, scenes = same_photo_of(names), scene_of(names)
    hashes = [phash_file(folder / f) for f in files]
    rule = next(r for r in calibration.rules() if r.params == ("near", "near_low", "bits"))
    params = (shipped.near, shipped.near_low, shipped.hash_bits)
    args.dedup_corpus = f"{len(names)} photos, {len(files)} files"
    out = {}
    for kind, precision in configs:
        data = calibration.cached_embeddings(arch, weights, folder, files, engine=kind, precision=precision)
        pairs = calibration.build_pairs(data["E"], data["M"], data["top5"], hashes, [same[r.photo] for r in truth],
                                        [scenes[r.photo] for r in truth])  # fmt: skip
        out[(kind, precision)] = calibration.evaluate(rule, params, pairs).group[2]
        log(f"  {arch} {kind}/{precision}: group F1 {out[(kind, precision)]:.4f} at {params}")
    return out


# --- the report ----------------------------------------------------------------------------------


def table(rows: list[dict]) -> list[str]:
    lines = [f"| arch | engine/precision | cosine median | cosine min | p@{P_AT_K} (fp32 -> candidate) | "
             "dedup F1 (fp32 -> candidate) | img/s ratio vs onnxruntime fp32 | gates |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for r in rows:
        label = f"{r['engine']}/{r['precision']}" + (" **(default)**" if r["registry_default"] else "")
        if r.get("reference"):
            lines.append(f"| {r['arch']} | {label} | reference | reference | | | | |")
            continue
        if r["ran"] != r["precision"]:
            label += f" (ran {r['ran']}: no bf16 on this CPU)"
        p, f = r["p_at_10"], r["dedup_f1"]
        dedup = f"{f['fp32']:.3f} -> {f['candidate']:.3f}" if f else f"n/a: {r['dedup_note']}"
        speed = (f"{r['img_s_ratio']:.2f}x ({r['img_s']:.0f} / {r['img_s_onnxruntime_fp32']:.0f})"
                 + ("*" if r["contended"] else ""))  # fmt: skip
        gates = "pass" if r["pass"] else "**fail**: " + "; ".join(r["failures"])
        lines.append(f"| {r['arch']} | {label} | {r['cosine_median']:.6f} | {r['cosine_min']:.5f} | "
                     f"{p['fp32']:.3f} -> {p['candidate']:.3f} | {dedup} | {speed} | {gates} |")  # fmt: skip
    return lines


def report(rows: list[dict], args: argparse.Namespace, command: str) -> str:
    archs = list(dict.fromkeys(r["arch"] for r in rows))
    weights = {r["arch"]: r["weights"] for r in rows if "weights" in r}
    lines = [BEGIN, "", f"Generated by `{command}`; do not edit by hand.", ""]
    lines += table(rows)
    lines += ["",
              f"Gates, each against eager fp32: embedding cosine median >= {COSINE_MEDIAN} and min >= {COSINE_MIN} "
              f"over {args.photos} noisy camera JPEGs (devtools/photos.py, seed {args.seed}) decoded as the pipeline "
              f"decodes; precision@{P_AT_K} on {args.labelled_images} openclipart-png drawings in {len(CLASSES)} "
              f"classes ({args.labelled_per_class or 'all'} per class, transparency over white) not lower by more "
              f"than {P_AT_K_TOLERANCE}; near-duplicate group F1 of client/duplicates CALIBRATED on the dedup "
              f"calibration corpus ({getattr(args, 'dedup_corpus', 'not taken in this run')}) not lower by more than "
              f"{F1_TOLERANCE}, where the architecture has calibrated thresholds. img/s: the model stage alone, "
              f"batch {TIMED_BATCH}, {args.threads} threads, best of {args.rounds} x {args.seconds} s "
              f"(* another process used over {BUSY} core meanwhile). **(default)**: the registry's choice "
              "(handler/imgsim/models.py) when this ran.",
              ""]  # fmt: skip
    lines += [f"- {arch}: {weights.get(arch, '')}" for arch in archs]
    if "resnet18" in archs and "random" in weights.get("resnet18", ""):
        lines += ["", "ResNet18's figures are with seeded random weights: they test the numerics of each engine, "
                  "not learned features, and it has no calibrated near-duplicate thresholds (random weights cannot "
                  "be calibrated), so its dedup F1 gate is not taken."]  # fmt: skip
    lines += ["", f"Machine: {machine().short()}; {machine().cpu}, SIMD: {' '.join(machine().simd)}.", "", END]
    return "\n".join(lines)


def write_docs(block: str, path: Path = DOCS) -> None:
    """Replaces the block between BEGIN and END in ``path`` (appends a section when it has none)."""
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    if BEGIN in text and END in text:
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    else:
        text += "\n## The gates\n\n" + block + "\n"
    path.write_text(text, encoding="utf-8")
    log(f"wrote the table into {path}")


def weights_option(value: str) -> tuple[str, Path]:
    arch, _, path = value.partition("=")
    if not path:
        raise argparse.ArgumentTypeError(f"expected ARCH=FILE, got {value!r}")
    return arch, Path(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="precision_gates.py", description=__doc__.splitlines()[0],
                                epilog=__doc__[__doc__.index("Examples:"):],
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--arch", nargs="+", default=["resnet18", "efficientnet_lite0"], help="architectures (both)")
    p.add_argument("--weights", type=weights_option, action="append", default=[], metavar="ARCH=FILE",
                   help="weights of an architecture whose package ships none (resnet18: else seeded random)")
    p.add_argument("--photos", type=int, default=200, help="noisy camera JPEGs for the cosine gate (200)")
    p.add_argument("--labelled-per-class", type=int, default=0, metavar="N",
                   help="clip-art images per class for precision@10 (0: all, about 870 in all)")
    p.add_argument("--skip-dedup", action="store_true", help="leave out the near-duplicate F1 gate (the slow part)")
    p.add_argument("--setup", action="store_true", help="install the missing photo sources of the dedup corpus first")
    p.add_argument("--seed", type=int, default=0, help="of the camera photos and of the dedup corpus's edits")
    p.add_argument("--threads", type=int, default=2, help="torch, ONNX Runtime and OpenVINO threads (2)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds per engine (3)")
    p.add_argument("--seconds", type=float, default=2.0, help="per timing measurement (2)")
    p.add_argument("--json", type=Path, metavar="FILE", help="write every figure here")
    p.add_argument("--write-docs", action="store_true", help=f"replace the table in {DOCS.relative_to(REPO)}")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.setup:
        from devtools.photos import setup_sources

        setup_sources()
    try:
        labelled = labelled_set(args.labelled_per_class)
    except FileNotFoundError as error:
        raise SystemExit(f"precision_gates.py: {error}") from None
    args.labelled_images = len(labelled[0])
    log(f"making or reusing {args.photos} noisy camera photos ...")
    photos = noisy_photos(args.photos, args.seed)
    weights = dict(args.weights)
    decoded: dict = {}
    rows = [row for arch in args.arch for row in gate_arch(arch, weights.get(arch), photos, labelled, decoded, args)]
    command = "python bench/precision_gates.py " + " ".join(argv if argv is not None else sys.argv[1:])
    block = report(rows, args, command.strip())
    print(block)
    if args.json:
        figures = {"machine": machine().describe(), "command": command.strip(), "rows": rows,
                   "settings": {k: str(v) for k, v in vars(args).items()}}  # fmt: skip
        args.json.write_text(json.dumps(figures, indent=1) + "\n", encoding="utf-8")
        log(f"wrote {args.json}")
    if args.write_docs:
        write_docs(block)
    failing = [f"{r['arch']} {r['engine']}/{r['precision']}" for r in rows
               if r["registry_default"] and not r.get("reference") and not r["pass"]]  # fmt: skip
    if failing:
        log(f"precision_gates.py: the registry default of {', '.join(failing)} fails its gates: "
            "set another engine/precision in handler/imgsim/models.py")  # fmt: skip
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
