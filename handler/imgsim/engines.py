"""Execution back ends: one choice of how the model runs, behind one small interface.

Every engine takes the float32 NCHW normalised batch and returns ``(logits, features)``
as float32 CPU tensors, from one pass, as ``EmbeddingNet.forward`` would. Which engine and
precision an architecture runs by default is the registry's choice (``ModelSpec.engine``,
chosen by ``bench/model_stage.py`` and the gates of ``bench/precision_gates.py``).
"""

from __future__ import annotations

import contextlib
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import torch

from .models import EmbeddingNet, ModelSpec

ENGINES = ("eager", "onnxruntime", "openvino")
PRECISIONS = ("fp32", "bf16", "fp16")

# What runs where (docs/ENGINES.md has the figures). On the CPU, bf16 is OpenVINO's: about
# 2x its fp32 where the CPU has AVX-512 BF16 or AMX. Eager bf16 autocast was slower than ONNX
# Runtime fp32 and TorchScript won nowhere, so both are gone; eager fp32 stays as the
# reference every engine is checked against. ONNX Runtime's CPU kernels have no bf16 Conv.
SUPPORTED: dict[tuple[str, str], tuple[str, ...]] = {
    ("cpu", "eager"): ("fp32",),
    ("cpu", "onnxruntime"): ("fp32",),
    ("cpu", "openvino"): ("fp32", "bf16"),
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
    ``threads`` (ONNX Runtime and OpenVINO) defaults to ``torch.get_num_threads()``, so set
    torch's thread count first. ``exported``: the engine's file made at build time (the ONNX
    file or the OpenVINO IR's .xml in an archive), loaded as it is; ``model`` may then be
    None. Without it the model is exported here, into ``workdir`` (kept) or a temporary
    folder (removed once loaded). The engine's ``precision`` is what it really runs:
    OpenVINO bf16 on a CPU without bf16 units runs fp32 and says so.
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
    threads = threads or torch.get_num_threads()
    if kind == "onnxruntime":
        return OnnxRuntimeEngine(model, spec, workdir, threads, onnx_file=exported)
    if kind == "openvino":
        return OpenVinoEngine(model, spec, workdir, threads, precision, ir_file=exported)
    if model is None:
        raise ValueError(f"engine {kind!r} runs the torch model: pass it")
    return EagerEngine(model.eval(), device, precision)


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


class OnnxRuntimeEngine:
    """The model exported to ONNX (dynamic batch), run by ONNX Runtime's CPU provider."""

    name = "onnxruntime"
    precision = "fp32"
    INPUT, OUTPUTS = "pixels", ("logits", "features")

    def __init__(
        self, model: EmbeddingNet | None, spec: ModelSpec, workdir: Path | None, threads: int,
        onnx_file: Path | None = None,
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
        # normalise in the loop (measured with bench/model_stage.py).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        with _exported_or_export(model, spec, workdir, onnx_file, "onnxruntime", export_onnx) as onnx_file:
            self.session = ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
        self.threads = threads
        self(_example(spec))  # the first run sizes ONNX Runtime's memory arena

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = x.detach().to("cpu", torch.float32).contiguous().numpy()
        logits, features = self.session.run(self.OUTPUTS, {self.INPUT: pixels})
        return torch.from_numpy(logits), torch.from_numpy(features)


class OpenVinoEngine:
    """The model as OpenVINO IR (dynamic batch), compiled for the CPU in fp32 or bf16.

    One stream with ``threads`` threads, as ONNX Runtime: one worker uses every core. The
    precision is set explicitly: OpenVINO's own default on a CPU with bf16 units is bf16,
    which would change the vectors of an fp32 archive without saying so.
    """

    name = "openvino"

    def __init__(
        self, model: EmbeddingNet | None, spec: ModelSpec, workdir: Path | None, threads: int,
        precision: str = "fp32", ir_file: Path | None = None,
    ):  # fmt: skip
        try:
            import openvino as ov
        except ModuleNotFoundError as error:
            raise ModuleNotFoundError("the openvino engine needs openvino: pip install -r requirements.txt") from error

        core = ov.Core()
        self.precision = precision if precision == "fp32" or cpu_runs_bf16(core) else "fp32"
        settings = {
            "INFERENCE_PRECISION_HINT": "bf16" if self.precision == "bf16" else "f32",
            "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
        }  # fmt: skip
        with _exported_or_export(model, spec, workdir, ir_file, "openvino", _export_ir) as ir_file:
            self.compiled = core.compile_model(core.read_model(str(ir_file)), "CPU", settings)
        self.request = self.compiled.create_infer_request()
        self.outputs = [self.compiled.output(name) for name in OnnxRuntimeEngine.OUTPUTS]
        self.threads = threads
        self(_example(spec))

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = x.detach().to("cpu", torch.float32).contiguous().numpy()
        result = self.request.infer([pixels])  # outputs are copied out of the request's buffers
        logits, features = (torch.from_numpy(result[output]) for output in self.outputs)
        return logits, features


def cpu_runs_bf16(core=None) -> bool:
    """Whether OpenVINO has bf16 kernels for this CPU (AVX-512 BF16 or AMX)."""
    import openvino as ov

    return "BF16" in (core or ov.Core()).get_property("CPU", "OPTIMIZATION_CAPABILITIES")


@contextlib.contextmanager
def _exported_or_export(model, spec, workdir, exported, kind, export) -> Iterator[Path]:
    """The engine's file: ``exported`` as it is, else ``model`` exported into ``workdir`` or a temporary folder."""
    if exported is not None:
        yield Path(exported)
        return
    if model is None:
        raise ValueError(f"the {kind} engine needs the model or its exported file")
    with contextlib.ExitStack() as stack:
        folder = Path(workdir) if workdir else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        yield export(model.eval(), spec, folder)[0]


def onnx_file_name(spec: ModelSpec) -> str:
    return f"{spec.name}.onnx"


def export_for(kind: str, model: EmbeddingNet, spec: ModelSpec, folder: Path) -> list[Path]:
    """The files ``kind`` loads (the first is the one named to it), written into ``folder``;
    [] for an engine that runs the torch model itself."""
    exports = {"onnxruntime": export_onnx, "openvino": _export_ir}
    return exports[kind](model.eval(), spec, folder) if kind in exports else []


def _export_ir(model: EmbeddingNet, spec: ModelSpec, folder: Path) -> list[Path]:
    """OpenVINO IR (.xml graph + .bin weights, kept fp32: the precision is chosen at compile)."""
    import openvino as ov

    with tempfile.TemporaryDirectory() as tmp:
        [onnx] = export_onnx(model, spec, Path(tmp))
        xml = Path(folder) / f"{spec.name}.xml"
        xml.parent.mkdir(parents=True, exist_ok=True)
        ov.save_model(ov.Core().read_model(str(onnx)), str(xml), compress_to_fp16=False)
    return [xml, xml.with_suffix(".bin")]


def export_onnx(model: EmbeddingNet, spec: ModelSpec, folder: Path) -> list[Path]:
    """Writes ``model`` as one ONNX file with a dynamic batch axis; same model, same bytes."""
    path = Path(folder) / onnx_file_name(spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (_example(spec),), str(path), dynamo=True, verbose=False, external_data=False,
            input_names=[OnnxRuntimeEngine.INPUT], output_names=list(OnnxRuntimeEngine.OUTPUTS),
            dynamic_shapes=({0: batch},),
        )  # fmt: skip
    return [path]
