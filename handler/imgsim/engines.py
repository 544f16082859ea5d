"""Execution back ends: one choice of how the model runs, behind one small interface.

Every engine takes the float32 NCHW normalised batch and returns ``(logits, features)``
as float32 CPU tensors, from one pass, as ``EmbeddingNet.forward`` would. On a 2-core
CPU, ONNX Runtime fp32 is the fastest engine that keeps embeddings exact (cosine 1.0 to
eager fp32) for both architectures; ``bench/model_stage.py`` measures every choice.
"""

from __future__ import annotations

import contextlib
import tempfile
import warnings
from pathlib import Path
from typing import Protocol

import torch

from .models import EmbeddingNet, ModelSpec

ENGINES = ("eager", "torchscript", "onnxruntime")
PRECISIONS = ("fp32", "bf16", "fp16")

# What runs where. bf16 on the CPU is eager autocast (oneDNN uses AVX-512 BF16 where the
# CPU has it). Frozen TorchScript bf16 was no faster and further from fp32 (cosine 0.990 on
# EfficientNet-Lite0); ONNX Runtime's CPU kernels have no bf16 Conv and its fp16 is slower.
SUPPORTED: dict[tuple[str, str], tuple[str, ...]] = {
    ("cpu", "eager"): ("fp32", "bf16"),
    ("cpu", "torchscript"): ("fp32",),
    ("cpu", "onnxruntime"): ("fp32",),
    ("cuda", "eager"): ("fp32", "fp16", "bf16"),
}

_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_EXAMPLE_BATCH = 2  # torch.export specialises a batch of 1, so trace and export with 2


class Engine(Protocol):
    name: str
    precision: str

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


def supported(kind: str, device: torch.device | str, precision: str) -> bool:
    return precision in SUPPORTED.get((torch.device(device).type, kind), ())


def make_engine(
    kind: str, model: EmbeddingNet | None, spec: ModelSpec, device: torch.device | str,
    precision: str = "fp32", workdir: Path | None = None, *, threads: int | None = None,
    exported: Path | None = None,
) -> Engine:  # fmt: skip
    """Builds the ``kind`` engine for ``model``, already on ``device`` and in eval mode.

    The eager engine takes ``model`` over (it is converted to channels_last in place).
    ``threads`` (ONNX Runtime only) defaults to ``torch.get_num_threads()``, so set torch's
    thread count first. ``exported``: the engine's file made at build time (the ONNX file
    in an archive), loaded as it is; ``model`` may then be None. Without it the model is
    exported here, into ``workdir`` (kept) or a temporary folder (removed once loaded).
    """
    device = torch.device(device)
    if kind not in ENGINES:
        raise ValueError(f"unknown engine {kind!r}; known: {', '.join(ENGINES)}")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; known: {', '.join(PRECISIONS)}")
    if not supported(kind, device, precision):
        here = [f"{k}/{p}" for (d, k), ps in SUPPORTED.items() if d == device.type for p in ps]
        raise ValueError(
            f"engine {kind!r} does not run {precision} on {device.type}; "
            f"choose one of: {', '.join(here) or 'none (unsupported device)'}"
        )
    if kind == "onnxruntime":
        return OnnxRuntimeEngine(model, spec, workdir, threads or torch.get_num_threads(), onnx_file=exported)
    if model is None:
        raise ValueError(f"engine {kind!r} runs the torch model: pass it")
    model = model.eval()
    if kind == "eager":
        return EagerEngine(model, device, precision)
    return TorchScriptEngine(model, spec)


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    dtype = _DTYPES[precision]
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def _example(spec: ModelSpec) -> torch.Tensor:
    return torch.zeros(_EXAMPLE_BATCH, 3, spec.input_size, spec.input_size)


class EagerEngine:
    """The module itself, channels_last (oneDNN's fast layout), autocast for bf16/fp16."""

    name = "eager"

    def __init__(self, model: EmbeddingNet, device: torch.device, precision: str):
        self.model = model.to(device=device, memory_format=torch.channels_last)
        self.device, self.precision = device, precision

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with _autocast(self.device, self.precision):
            logits, features = self.model(x)
        return logits.float().cpu(), features.float().cpu()


class TorchScriptEngine:
    """Traced, frozen (batch norm folded into conv) and optimised for inference (oneDNN)."""

    name = "torchscript"
    precision = "fp32"

    def __init__(self, model: EmbeddingNet, spec: ModelSpec):
        example = _example(spec)
        # torch.jit is deprecated in favour of torch.compile, which takes minutes to compile
        # on 2 cores; the deprecation warning would only repeat that on every worker start.
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore", FutureWarning)
            traced = torch.jit.freeze(torch.jit.trace(model, example, check_trace=False))
            self.module = torch.jit.optimize_for_inference(traced)
            for _ in range(2):  # the profiling executor specialises the graph on its first runs
                self.module(example)

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.module(x.contiguous())


class OnnxRuntimeEngine:
    """The model exported to ONNX (dynamic batch), run by ONNX Runtime's CPU provider."""

    name = "onnxruntime"
    precision = "fp32"
    INPUT, OUTPUTS = "pixels", ("logits", "features")

    def __init__(
        self, model: EmbeddingNet | None, spec: ModelSpec, workdir: Path | None, threads: int,
        spinning: bool = False, onnx_file: Path | None = None,
    ):  # fmt: skip
        try:
            import onnxruntime as ort
        except ModuleNotFoundError as error:
            raise ModuleNotFoundError(
                "the onnxruntime engine needs onnxruntime, onnx and onnxscript: pip install -r requirements.txt"
            ) from error

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only
        # Spinning workers keep burning a core after each run, which torch's normalise and
        # the decoder need: on 2 cores it bought nothing model-only and cost ~15% with
        # normalise in the loop (bench/model_stage.py, "onnxruntime+spin").
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        with contextlib.ExitStack() as stack:
            if onnx_file is None:
                if model is None:
                    raise ValueError("the onnxruntime engine needs the model or its exported ONNX file")
                folder = Path(workdir) if workdir else Path(stack.enter_context(tempfile.TemporaryDirectory()))
                onnx_file = export_onnx(model.eval(), spec, folder / onnx_file_name(spec))
            self.session = ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
        self.threads, self.spinning = threads, spinning
        self(_example(spec))  # the first run sizes ONNX Runtime's memory arena

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = x.detach().to("cpu", torch.float32).contiguous().numpy()
        logits, features = self.session.run(self.OUTPUTS, {self.INPUT: pixels})
        return torch.from_numpy(logits), torch.from_numpy(features)


def onnx_file_name(spec: ModelSpec) -> str:
    return f"{spec.name}.onnx"


def export_onnx(model: EmbeddingNet, spec: ModelSpec, path: Path) -> Path:
    """Writes ``model`` as one ONNX file with a dynamic batch axis; same model, same bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (_example(spec),), str(path), dynamo=True, verbose=False, external_data=False,
            input_names=[OnnxRuntimeEngine.INPUT], output_names=list(OnnxRuntimeEngine.OUTPUTS),
            dynamic_shapes=({0: batch},),
        )  # fmt: skip
    return path
