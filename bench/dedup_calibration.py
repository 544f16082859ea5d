"""Calibrates near-duplicate detection on real photos, and times grouping at scale.

Calibration: every photo devtools/photos.py finds, plus edited copies of each (crop,
rescale, JPEG, brightness, colour, rotation, flip, caption, and chains of 2-3 of them,
random strengths, seeded). Every file is embedded in-process exactly as the server does
(imgsim.pipeline.Pipeline), and its pHash taken as client/duplicates/phash.py does. Then each
candidate rule is scored at many thresholds by precision, recall and F1 over pairs:

- "link": the pair itself passes the rule;
- "group": the pair ends up in one group after union-find, which is what a user sees
  (one false link merges two whole groups, one true link can rescue a weak copy).

A pair is positive when both files come from one photo (or from photos.SAME_PHOTO);
pairs of different photos of one scene (photos.SAME_SCENE) are left out of the
counts. The defaults are the most conservative parameters of the chosen rule whose
group F1 is within 0.005 of its best; a 2-fold cross-validation by scene checks that
they hold on photos they were not chosen on.

Examples:
    .venv/bin/python bench/dedup_calibration.py --setup --write-docs   # the documented run (~10 min)
    .venv/bin/python bench/dedup_calibration.py --arch resnet18 --weights resnet18-f37072fd.pth
    .venv/bin/python bench/dedup_calibration.py --scale 100000        # grouping time and memory only
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from client.duplicates import CALIBRATED, Thresholds, unit_rows
from client.duplicates.phash import phash_file
from devtools import CACHE, REPO
from devtools.machine import machine
from devtools.photos import (
    SAME_PHOTO,
    SAME_SCENE,
    CorpusSpec,
    collect_photos,
    make_corpus,
    read_truth,
    same_photo_of,
    scene_of,
    setup_sources,
)

DOCS = REPO / "docs" / "DEDUP.md"
BEGIN, END = "<!-- calibration:begin -->", "<!-- calibration:end -->"
WITHIN = 0.005  # F1 this close to the best counts as a tie, and the most conservative tie wins


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- embedding, in-process, as the server does ---------------------------------------------------


def load_pipeline(arch: str, weights: Path | None, engine: str = "auto", precision: str = "auto"):
    """The server's pipeline, in process: by default the engine and precision an archive of ``arch`` runs."""
    import torch

    from imgsim.models import get_spec, imagenet_labels, load_model, sha256_file
    from imgsim.pipeline import Pipeline, PipelineConfig

    spec = get_spec(arch)
    if weights is None:
        weights = spec.packaged_weights()
        if weights is None:
            raise SystemExit(
                f"dedup_calibration.py: {arch} needs its published weights: --weights PATH/{spec.weights_file} "
                "(they cannot be downloaded here; efficientnet_lite0's ship with a package)"
            )
    digest = sha256_file(weights)
    if not digest.startswith(spec.weights_sha256_prefix):
        log(f"warning: {weights} is not {arch}'s published weights (sha256 {digest[:12]}); results are for this file")
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    config = PipelineConfig(engine=engine, precision=precision)
    return Pipeline(spec, load_model(spec, weights), imagenet_labels(), digest, torch.device("cpu"), config)


def embed(pipeline, folder: Path, files: list[str], mirrored: bool, batch: int = 16) -> tuple[np.ndarray, list]:
    """Embeddings and top-5 predictions of ``files`` (of their mirror images when ``mirrored``)."""
    from PIL import Image, ImageOps

    vectors, predictions = [], []
    started = time.perf_counter()
    for i in range(0, len(files), batch):
        parts = {}
        for name in files[i : i + batch]:
            data = (folder / name).read_bytes()
            if mirrored:
                buf = io.BytesIO()
                ImageOps.mirror(Image.open(io.BytesIO(data)).convert("RGB")).save(buf, "BMP")  # lossless, no compression
                data = buf.getvalue()
            parts[name] = data
        reply = pipeline([parts])[0]
        for item in json.loads(reply.body):
            if "error" in item:
                raise SystemExit(f"dedup_calibration.py: {item['file']}: {item['error']}")
            vectors.append(item["embedding"])
            predictions.append([p["index"] for p in item["predictions"]])
        done = min(i + batch, len(files))
        if done % (batch * 16) == 0 or done == len(files):
            log(f"  embedded {done}/{len(files)}{' mirrored' if mirrored else ''} "
                f"({done / (time.perf_counter() - started):.1f} img/s)")  # fmt: skip
    return np.asarray(vectors, dtype=np.float32), predictions


def cached_embeddings(
    arch: str, weights: Path | None, folder: Path, files: list[str], engine: str = "auto", precision: str = "auto",
) -> dict:  # fmt: skip
    """Embeddings of the corpus and its mirror images; cached by model, engine, precision and file contents."""
    import torch

    from imgsim.models import get_spec
    from imgsim.pipeline import PipelineConfig, engine_choice

    contents = hashlib.sha256()
    for name in files:
        contents.update(name.encode() + hashlib.sha256((folder / name).read_bytes()).digest())
    tag = hashlib.sha256(((weights and str(weights.resolve())) or "packaged").encode()).hexdigest()[:8]
    kind, precision = engine_choice(PipelineConfig(engine=engine, precision=precision), get_spec(arch), torch.device("cpu"))
    path = CACHE / "dedup-bench" / f"{arch}-{tag}-{kind}-{precision}-{contents.hexdigest()[:16]}.npz"
    if path.is_file():
        log(f"embeddings from {path.relative_to(REPO)}")
        data = np.load(path, allow_pickle=False)
        return {"E": data["E"], "M": data["M"], "top5": data["top5"], "img_s": float(data["img_s"])}
    log(f"embedding {len(files)} files and their mirror images with {arch}, {kind} {precision} (in-process) ...")
    pipeline = load_pipeline(arch, weights, kind, precision)
    started = time.perf_counter()
    E, top5 = embed(pipeline, folder, files, mirrored=False)
    img_s = len(files) / (time.perf_counter() - started)
    M, _ = embed(pipeline, folder, files, mirrored=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, E=E, M=M, top5=np.asarray(top5, dtype=np.int32), img_s=img_s)
    return {"E": E, "M": M, "top5": np.asarray(top5, dtype=np.int32), "img_s": img_s}


# --- scoring -------------------------------------------------------------------------------------


@dataclass
class Pairs:
    """Every pair i < j of the corpus: the signals, and the truth."""

    i: np.ndarray
    j: np.ndarray
    cosine: np.ndarray
    cosine_mirror: np.ndarray  # best of as-is and one side mirrored (needs a second embedding)
    phash: np.ndarray  # differing bits, as-is
    phash_mirror: np.ndarray  # differing bits, the smaller of as-is and mirrored (what the client uses)
    labels_shared: np.ndarray  # top-5 ImageNet classes in common
    positive: np.ndarray
    counted: np.ndarray  # False for pairs of different photos of one scene
    n: int


def build_pairs(E: np.ndarray, M: np.ndarray, top5: np.ndarray, hashes: list, photo: list[str],
                scene: list[str]) -> Pairs:  # fmt: skip
    n = len(E)
    i, j = np.triu_indices(n, 1)
    U, UM = unit_rows(E), unit_rows(M)
    C = U @ U.T
    CM = np.maximum(C, U @ UM.T)
    CM = np.maximum(CM, CM.T)
    bits = np.array([[int(b) for b in format(h.bits, "064b")] for h in hashes], dtype=np.uint8)
    mirror = np.array([[int(b) for b in format(h.mirrored, "064b")] for h in hashes], dtype=np.uint8)
    plain = (bits[:, None, :] != bits[None, :, :]).sum(-1)
    flipped = np.minimum(plain, (bits[:, None, :] != mirror[None, :, :]).sum(-1))
    flipped = np.minimum(flipped, flipped.T)
    shared = np.array([[len(set(a) & set(b)) for b in top5] for a in top5])
    p, s = np.asarray(photo), np.asarray(scene)
    same_photo, same_scene = p[:, None] == p[None, :], s[:, None] == s[None, :]
    return Pairs(i, j, C[i, j], CM[i, j], plain[i, j], flipped[i, j], shared[i, j], same_photo[i, j],
                 ~(same_scene & ~same_photo)[i, j], n)  # fmt: skip


def prf(predicted: np.ndarray, pairs: Pairs, mask: np.ndarray | None = None) -> tuple[float, float, float]:
    counted = pairs.counted if mask is None else pairs.counted & mask
    tp = int((predicted & pairs.positive & counted).sum())
    fp = int((predicted & ~pairs.positive & counted).sum())
    fn = int((~predicted & pairs.positive & counted).sum())
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    return precision, recall, (2 * precision * recall / (precision + recall) if precision + recall else 0.0)


def grouped(linked: np.ndarray, pairs: Pairs) -> np.ndarray:
    """For every pair: do the links put both in one connected component?"""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(int(linked.sum())), (pairs.i[linked], pairs.j[linked])), shape=(pairs.n, pairs.n))
    _, label = connected_components(graph, directed=False)
    return label[pairs.i] == label[pairs.j]


@dataclass
class Rule:
    name: str
    params: tuple[str, ...]
    grid: list[tuple]
    predict: Callable[[Pairs, tuple], np.ndarray]
    conservative: Callable[[tuple], tuple]  # sort key: larger is more conservative
    cost: str


def rules() -> list[Rule]:
    t = [round(float(x), 2) for x in np.arange(0.50, 0.96, 0.01)]
    bits = list(range(0, 25, 2))
    combined = [(hi, lo, d) for hi in [round(float(x), 2) for x in np.arange(0.70, 0.91, 0.02)]
                for lo in (0.40, 0.45, 0.50, 0.55, 0.60, 0.65) for d in (6, 8, 10, 12, 14, 16) if lo < hi]  # fmt: skip
    return [
        Rule("cosine (global vector; the baseline)", ("cosine",), [(x,) for x in t],
             lambda p, a: p.cosine >= a[0], lambda a: a, "the store's vector"),
        Rule("cosine, mirror-aware", ("cosine",), [(x,) for x in t],
             lambda p, a: p.cosine_mirror >= a[0], lambda a: a, "a 2nd embedding per image (mirrored)"),
        Rule("cosine and >= 1 shared top-5 label", ("cosine",), [(x,) for x in t],
             lambda p, a: (p.cosine >= a[0]) & (p.labels_shared >= 1), lambda a: a, "the store's predictions"),
        Rule("pHash", ("bits",), [(d,) for d in bits],
             lambda p, a: p.phash <= a[0], lambda a: (-a[0],), "a decode per image"),
        Rule("pHash, mirror-aware", ("bits",), [(d,) for d in bits],
             lambda p, a: p.phash_mirror <= a[0], lambda a: (-a[0],), "a decode per image"),
        Rule("cosine >= near, or cosine >= near_low and mirror-aware pHash <= bits",
             ("near", "near_low", "bits"), combined,
             lambda p, a: (p.cosine >= a[0]) | ((p.cosine >= a[1]) & (p.phash_mirror <= a[2])),
             lambda a: (a[0], a[1], -a[2]), "a decode per image in the middle band only"),
    ]  # fmt: skip


@dataclass
class Scored:
    rule: Rule
    params: tuple
    link: tuple[float, float, float]
    group: tuple[float, float, float]


def sweep(rule: Rule, pairs: Pairs, mask: np.ndarray | None = None) -> list[Scored]:
    out = []
    for params in rule.grid:
        linked = rule.predict(pairs, params)
        out.append(Scored(rule, params, prf(linked, pairs, mask), prf(grouped(linked, pairs), pairs, mask)))
    return out


def choose(scored: list[Scored]) -> Scored:
    """The most conservative parameters whose group F1 is within WITHIN of the best."""
    best = max(s.group[2] for s in scored)
    return max((s for s in scored if s.group[2] >= best - WITHIN), key=lambda s: s.rule.conservative(s.params))


def evaluate(rule: Rule, params: tuple, pairs: Pairs, mask: np.ndarray | None = None) -> Scored:
    linked = rule.predict(pairs, params)
    return Scored(rule, params, prf(linked, pairs, mask), prf(grouped(linked, pairs), pairs, mask))


# --- the report ----------------------------------------------------------------------------------


def fmt(values: tuple[float, float, float]) -> str:
    return " | ".join(f"{v:.3f}" for v in values)


def show(params: tuple, rule: Rule) -> str:
    return ", ".join(f"{name} {value}" for name, value in zip(rule.params, params))


def calibration_corpus(seed: int) -> tuple[Path, list]:
    """The corpus folder of ``seed`` (written when missing, or stale for the photos found here) and its truth."""
    folder = CACHE / f"dedup-corpus-seed{seed}"
    photos = collect_photos()
    if (folder / "truth.csv").is_file() and {r.photo for r in read_truth(folder)} != {p.name for p in photos}:
        log(f"the photos found here changed since {folder.relative_to(REPO)} was written: writing it again")
        shutil.rmtree(folder)
    if not (folder / "truth.csv").is_file():
        log(f"writing the corpus: {len(photos)} photos and their edited copies -> {folder.relative_to(REPO)}")
        make_corpus(photos, folder, CorpusSpec(seed=seed))
    return folder, read_truth(folder)


def calibrate(args: argparse.Namespace) -> str:
    folder, truth = calibration_corpus(args.seed)
    files = [r.file for r in truth]
    names = sorted({r.photo for r in truth})
    same, scenes = same_photo_of(names), scene_of(names)
    photo = [same[r.photo] for r in truth]
    scene = [scenes[r.photo] for r in truth]
    data = cached_embeddings(args.arch, args.weights, folder, files)
    started = time.perf_counter()
    hashes = [phash_file(folder / f) for f in files]
    hash_ms = 1000 * (time.perf_counter() - started) / len(files)
    pairs = build_pairs(data["E"], data["M"], data["top5"], hashes, photo, scene)
    log(f"{len(files)} files, {int((pairs.positive & pairs.counted).sum())} positive pairs, "
        f"{int((~pairs.positive & pairs.counted).sum())} negative, {int((~pairs.counted).sum())} left out")  # fmt: skip

    all_rules = rules()
    results = []
    for rule in all_rules:
        scored = sweep(rule, pairs)
        results.append((rule, scored, choose(scored)))
        log(f"  {rule.name}: {show(results[-1][2].params, rule)} -> group F1 {results[-1][2].group[2]:.3f}")
    baseline_rule, baseline_scored, baseline = results[0]
    chosen_rule, chosen_scored, chosen = results[-1]
    defaults = Thresholds(near=chosen.params[0], near_low=chosen.params[1], hash_bits=chosen.params[2],
                          similar=similar_threshold(pairs, truth))  # fmt: skip

    lines = [BEGIN, "", f"Generated by `bench/dedup_calibration.py` (seed {args.seed}, {args.arch}); do not edit by hand.", ""]
    lines += corpus_section(truth, pairs, data["img_s"], hash_ms)
    lines += ["", "### Rules compared (each at its own chosen parameters)", "",
              "| rule | parameters | needs | link P | link R | link F1 | group P | group R | group F1 |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for rule, _, best in results:
        lines.append(f"| {rule.name} | {show(best.params, rule)} | {rule.cost} | {fmt(best.link)} | {fmt(best.group)} |")
    lines += ["", f"### The chosen rule per threshold (near_low {chosen.params[1]}, bits {chosen.params[2]}) "
              "and plain cosine", "",
              "| cosine | rule: group P | group R | group F1 | link F1 | plain cosine: group P | group R | group F1 | link F1 |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for t in [round(x, 2) for x in np.arange(0.60, 0.92, 0.02)]:
        r = evaluate(chosen_rule, (t, min(chosen.params[1], t), chosen.params[2]), pairs)
        b = evaluate(baseline_rule, (t,), pairs)
        mark = " **(default)**" if t == chosen.params[0] else (" *(plain-cosine best)*" if t == baseline.params[0] else "")
        lines.append(f"| {t:.2f}{mark} | {fmt(r.group)} | {r.link[2]:.3f} | {fmt(b.group)} | {b.link[2]:.3f} |")
    lines += ["", "### Copies grouped with their original, per edit (defaults vs plain cosine at its best)", ""]
    lines += per_edit(truth, pairs, chosen_rule, chosen.params, baseline_rule, baseline.params)
    lines += ["", "### Different photos of one scene (left out of the counts above)", ""]
    lines += same_scene_section(truth, pairs, defaults)
    lines += ["", "### The similar tier", ""] + similar_section(pairs, truth, defaults.similar)
    lines += ["", "### Held out: 2-fold cross-validation by scene", ""] + cross_validation(pairs, scene, all_rules)
    lines += ["", "### Defaults", ""]
    lines += [f"`{args.arch}`: **near** when cosine >= {defaults.near}, or cosine >= {defaults.near_low} and the "
              f"mirror-aware pHash differs in <= {defaults.hash_bits} of 64 bits; **similar** (opt-in) when "
              f"cosine >= {defaults.similar}. On this corpus: group precision {chosen.group[0]:.3f}, recall "
              f"{chosen.group[1]:.3f}, F1 {chosen.group[2]:.3f}; plain cosine at its best ({baseline.params[0]}): "
              f"precision {baseline.group[0]:.3f}, recall {baseline.group[1]:.3f}, F1 {baseline.group[2]:.3f} "
              f"(link level: {fmt(baseline.link)})."]  # fmt: skip
    shipped = CALIBRATED.get(args.arch)
    if shipped is None or (shipped.near, shipped.near_low, shipped.hash_bits, shipped.similar) != (
        defaults.near, defaults.near_low, defaults.hash_bits, defaults.similar):  # fmt: skip
        lines += ["", f"client/duplicates/thresholds.py CALIBRATED[{args.arch!r}] is {shipped}; this run chose the above. "
                  "Update it if this run is the reference."]  # fmt: skip
        log(f"note: client/duplicates/thresholds.py ships {shipped} for {args.arch}; this run chose {defaults}")
    lines += ["", f"Machine: {machine().short()}.", "", END]
    return "\n".join(lines)


def corpus_section(truth: list, pairs: Pairs, img_s: float, hash_ms: float) -> list[str]:
    photos = sorted({r.photo for r in truth})
    by_source = Counter(p.split("/")[0] for p in photos)
    return [
        f"Corpus: {len(photos)} photos ({', '.join(f'{s} {n}' for s, n in by_source.items())}), each with "
        f"{len(truth) // len(photos) - 1} edited copies: {len(truth)} files, "
        f"{int((pairs.positive & pairs.counted).sum())} positive pairs, "
        f"{int((~pairs.positive & pairs.counted).sum())} negative pairs, {int((~pairs.counted).sum())} left out "
        f"(different photos of one scene). Embedding {img_s:.1f} img/s in-process; pHash {hash_ms:.1f} ms per file."
    ]  # fmt: skip


def per_edit(truth: list, pairs: Pairs, rule: Rule, params: tuple, base: Rule, base_params: tuple) -> list[str]:
    index = {(r.photo, r.edit): k for k, r in enumerate(truth)}
    together = {}
    for name, r, p in (("rule", rule, params), ("cosine", base, base_params)):
        g = grouped(r.predict(pairs, p), pairs)
        same = {}
        for k, ok in zip(zip(pairs.i.tolist(), pairs.j.tolist()), g.tolist()):
            same[k] = ok
        together[name] = same
    counts: dict[str, list[int]] = {}
    for k, r in enumerate(truth):
        if r.edit == "original":
            continue
        original = index[(r.photo, "original")]
        key = (min(k, original), max(k, original))
        edit = "combination" if "+" in r.edit else r.edit
        c = counts.setdefault(edit, [0, 0, 0])
        c[0] += 1
        c[1] += together["rule"][key]
        c[2] += together["cosine"][key]
    lines = ["| edit | copies | defaults | plain cosine |", "| --- | --- | --- | --- |"]
    for edit, (n, a, b) in counts.items():
        lines.append(f"| {edit} | {n} | {a / n:.3f} | {b / n:.3f} |")
    return lines


def same_scene_section(truth: list, pairs: Pairs, t: Thresholds) -> list[str]:
    originals = {r.photo: k for k, r in enumerate(truth) if r.edit == "original"}
    where = {(a, b): n for n, (a, b) in enumerate(zip(pairs.i.tolist(), pairs.j.tolist()))}
    lines = ["| photos | relation | cosine | pHash bits | tier at the defaults |", "| --- | --- | --- | --- | --- |"]
    for relation, groups in (("same scene", SAME_SCENE), ("same photo (counted as near)", SAME_PHOTO)):
        for a, b in groups:
            if a not in originals or b not in originals:
                continue
            n = where[tuple(sorted((originals[a], originals[b])))]
            cos, bits = float(pairs.cosine[n]), int(pairs.phash_mirror[n])
            tier = "near" if cos >= t.near or (cos >= t.near_low and bits <= t.hash_bits) else (
                "similar" if cos >= t.similar else "none")  # fmt: skip
            lines.append(f"| {a} / {b} | {relation} | {cos:.3f} | {bits} | {tier} |")
    return lines


def _original_pairs(pairs: Pairs, truth: list) -> np.ndarray:
    original = np.array([r.edit == "original" for r in truth])
    return original[pairs.i] & original[pairs.j] & ~pairs.positive & pairs.counted


def similar_threshold(pairs: Pairs, truth: list, rate: float = 0.002) -> float:
    """The lowest cosine (step 0.05) at which at most ``rate`` of the pairs of distinct originals link."""
    mask = _original_pairs(pairs, truth)
    for t in np.arange(0.30, 0.96, 0.05):
        if (pairs.cosine[mask] >= t).mean() <= rate:
            return round(float(t), 2)
    return 0.95


def similar_section(pairs: Pairs, truth: list, chosen: float) -> list[str]:
    mask = _original_pairs(pairs, truth)
    lines = [f"Pairs of originals of different scenes ({int(mask.sum())}) that reach each cosine:", "",
             "| cosine | pairs | share |", "| --- | --- | --- |"]  # fmt: skip
    for t in (0.40, 0.45, 0.50, 0.55, 0.60, 0.65, 0.70, 0.75):
        k = int((pairs.cosine[mask] >= t).sum())
        lines.append(f"| {t:.2f}{' **(default)**' if abs(t - chosen) < 1e-9 else ''} | {k} | {k / mask.sum():.4f} |")
    top = np.argsort(-np.where(mask, pairs.cosine, -1))[:8]
    lines += ["", "Rule: the lowest cosine (step 0.05) at which at most 0.2 % of those pairs link. Closest pairs: "
              + "; ".join(f"{truth[pairs.i[n]].photo} / {truth[pairs.j[n]].photo} {pairs.cosine[n]:.3f}" for n in top)]
    return lines


def cross_validation(pairs: Pairs, scene: list[str], all_rules: list[Rule]) -> list[str]:
    names = sorted(set(scene))
    order = np.random.default_rng(0).permutation(len(names))
    fold_of = {names[k]: n % 2 for n, k in enumerate(order)}
    fold = np.array([fold_of[s] for s in scene])
    lines = ["Parameters chosen on one half of the scenes, scored on the other half (pairs within the held-out half).",
             "", "| rule | held-out half | chosen on the other | group P | group R | group F1 |",
             "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for rule in (all_rules[0], all_rules[-1]):
        for held in (0, 1):
            train = (fold[pairs.i] != held) & (fold[pairs.j] != held)
            test = (fold[pairs.i] == held) & (fold[pairs.j] == held)
            picked = choose(sweep(rule, pairs, train))
            scored = evaluate(rule, picked.params, pairs, test)
            lines.append(f"| {rule.name} | {held + 1} | {show(picked.params, rule)} | {fmt(scored.group)} |")
    return lines


def write_docs(block: str) -> None:
    text = DOCS.read_text(encoding="utf-8") if DOCS.is_file() else ""
    if BEGIN in text and END in text:
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    else:
        text += "\n## Calibration\n\n" + block + "\n"
    DOCS.write_text(text, encoding="utf-8")
    log(f"wrote the tables into {DOCS.relative_to(REPO)}")


# --- scale ---------------------------------------------------------------------------------------


def synthetic(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, int]:
    """Embedding-like vectors: non-negative, clustered by subject, with 5 % planted near copies."""
    rng = np.random.default_rng(seed)
    subjects = rng.gamma(0.6, 1.0, size=(max(1, n // 50), dim)).astype(np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 8192):
        stop = min(n, start + 8192)
        base = subjects[rng.integers(0, len(subjects), stop - start)]
        out[start:stop] = np.maximum(base + rng.gamma(0.6, 1.0, size=(stop - start, dim)).astype(np.float32) * 1.5, 0)
    copies = rng.choice(n, size=n // 20, replace=False)
    sources = rng.integers(0, n, size=len(copies))
    out[copies] = out[sources] * rng.uniform(0.9, 1.1, size=(len(copies), 1)).astype(np.float32) + \
        rng.gamma(0.6, 0.15, size=(len(copies), dim)).astype(np.float32)  # fmt: skip
    return out, len(copies)


def scale(n: int, dim: int) -> str:
    """Writes n synthetic vectors to a SQLite store with a file per content, then times client/dedup.py --store."""
    from client.store import open_store

    identity = {"architecture": "efficientnet_lite0", "weights_sha256": "0" * 64, "embedding_dim": dim,
                "handler_version": "bench"}  # fmt: skip
    url, model = "http://127.0.0.1:1", "synthetic"
    with tempfile.TemporaryDirectory(dir=CACHE if CACHE.is_dir() else None) as tmp:
        root = Path(tmp)
        log(f"writing {n} synthetic {dim}-d vectors to a store, and {n} empty files ...")
        vectors, planted = synthetic(n, dim)
        files = root / "files"
        files.mkdir()
        with open_store(root / "store.sqlite") as store:
            store.remember_endpoint(url, model, identity)
            for start in range(0, n, 5000):
                shas = [hashlib.sha256(str(k).encode()).hexdigest() for k in range(start, min(n, start + 5000))]
                items = [{"sha256": s, "embedding": vectors[start + k], "predictions": []} for k, s in enumerate(shas)]
                paths = {}
                for k, s in enumerate(shas):
                    path = files / f"{start + k:07d}.jpg"
                    path.touch()
                    paths[s] = str(path)
                store.put_many(identity, items, paths)
        del vectors
        log("grouping with client/dedup.py --store ... (no N x N matrix; see the peak memory)")
        command = [sys.executable, str(REPO / "client" / "dedup.py"), "--store", str(root / "store.sqlite"),
                   "--url", url, "--model", model, "--format", "csv", "--output", str(root / "groups.csv"), "--quiet"]  # fmt: skip
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if result.returncode != 0:
            raise SystemExit(f"dedup.py failed: {result.stderr}")
        summary = result.stderr.strip().splitlines()[-1]
        store_mb = (root / "store.sqlite").stat().st_size / 2**20
    matrix_mb = n * dim * 4 / 2**20
    return (f"{n} stored {dim}-d vectors ({matrix_mb:.0f} MiB as float32; the full N x N cosine matrix would be "
            f"{n * n * 4 / 2**30:.0f} GiB), {planted} planted near copies, store file {store_mb:.0f} MiB: "
            f"`client/dedup.py --store` took {wall:.0f} s end to end. Its summary: \"{summary}\"")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dedup_calibration.py", description=__doc__.splitlines()[0],
                                epilog=__doc__[__doc__.index("Examples:"):],
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--arch", default="efficientnet_lite0", help="an architecture of handler/imgsim/models.py")
    p.add_argument("--weights", type=Path, help="its published weights file (efficientnet_lite0's ship with a package)")
    p.add_argument("--seed", type=int, default=0, help="random strengths of the edits")
    p.add_argument("--setup", action="store_true", help="install the missing photo sources first (pip, apt-get)")
    p.add_argument("--write-docs", action="store_true", help=f"put the tables into {DOCS.relative_to(REPO)}")
    p.add_argument("--scale", type=int, metavar="N", help="only time grouping N synthetic stored vectors")
    p.add_argument("--dim", type=int, default=1280, help="width of those vectors (default 1280, EfficientNet-Lite0)")
    args = p.parse_args(argv)
    if args.scale:
        line = scale(args.scale, args.dim)
        print(line)
        if args.write_docs:
            text = DOCS.read_text(encoding="utf-8")
            marker = "<!-- scale:begin -->"
            if marker in text:
                text = re.sub(r"<!-- scale:begin -->.*?<!-- scale:end -->",
                              lambda _: f"<!-- scale:begin -->\n{line}\n<!-- scale:end -->", text, flags=re.S)  # fmt: skip
                DOCS.write_text(text, encoding="utf-8")
        return 0
    if args.setup:
        setup_sources()
    block = calibrate(args)
    print(block)
    if args.write_docs:
        write_docs(block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
