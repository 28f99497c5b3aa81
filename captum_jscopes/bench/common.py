"""What the dataset benchmarks share: how a model and a prompt source are named
in a run's settings and folder, and the command-line options every one of them
takes (model, prompts, output)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

from captum_jscopes.models import DEFAULT_MODEL, EMBEDDED_MODELS
from captum_jscopes.runs.prompts import DATASETS, DEFAULT_DATASET

__all__ = ["model_short_name", "model_id", "data_id", "results_dir", "add_model_arguments", "add_prompt_arguments",
           "add_output_arguments"]

RESULTS_ROOT = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


def model_short_name(name: Optional[str]) -> str:
    """Short model name for the output folder: the embedded model's key
    (None, "default", "smollm2" -> "smollm2-135m-instruct"), else the last part
    of the path or Hub name ("meta-llama/Llama-3.2-1B" -> "Llama-3.2-1B")."""
    if name is None:
        return DEFAULT_MODEL
    key = str(name).strip().lower()
    for spec in EMBEDDED_MODELS.values():
        if key == spec.key or key in spec.aliases:
            return spec.key
    return str(name).rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1]


def model_id(name: Optional[str]) -> str:
    """The model as recorded in run.json: embedded key, absolute local path, or Hub name."""
    short = model_short_name(name)
    if name is None or short in EMBEDDED_MODELS:
        return short
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else str(name)


def data_id(data: str) -> str:
    """The prompt source as recorded in run.json (a shipped set's name, an absolute path, or a Hub spec)."""
    if data in DATASETS:
        return data
    path = Path(data).expanduser()
    return str(path.resolve()) if path.exists() else data


def results_dir(benchmark: str, model: Optional[str]) -> Path:
    """``benchmarks/results/<benchmark>-<model short name>`` in the repository."""
    return RESULTS_ROOT / f"{benchmark}-{model_short_name(model)}"


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model, --dtype, --device, --threads."""
    parser.add_argument("--model", default=None,
                        help="model name or path (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "float64"],
                        help="model dtype (default float32)")
    parser.add_argument("--device", default=None,
                        help="torch device (default: cuda:LOCAL_RANK when CUDA is available, else cpu)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads per process (default: torch's, i.e. OMP_NUM_THREADS or all cores); "
                        "1 is much faster on a CPU shared with other jobs")


def add_prompt_arguments(parser: argparse.ArgumentParser, n_default: Optional[int] = None) -> None:
    """--data, --n (alias --num-prompts), --offset."""
    parser.add_argument("--data", default=DEFAULT_DATASET,
                        help=f"a prompt set shipped with the package ({', '.join(DATASETS)}; default "
                        f"{DEFAULT_DATASET}: LAMBADA-1000), a .json/.jsonl file of {{\"text\": ...}} objects, "
                        "or hf:NAME[:SPLIT[:FIELD]]")
    # --num-prompts for launchers: torchrun's parser rejects "--n" even after the
    # script name (an ambiguous prefix of its own --nnodes, --nproc-per-node, ...)
    parser.add_argument("--n", "--num-prompts", dest="n", type=int, default=n_default,
                        help=f"number of prompts (default: {n_default or 'all'}); spell it --num-prompts after torchrun")
    parser.add_argument("--offset", type=int, default=0, help="prompts skipped at the start (default 0)")


def add_output_arguments(parser: argparse.ArgumentParser, benchmark: str) -> None:
    """--out, --overwrite, --report-only."""
    parser.add_argument("--out", default=None, help=f"output folder (default benchmarks/results/{benchmark}-<model>)")
    parser.add_argument("--overwrite", action="store_true", help="discard a previous run in --out instead of resuming")
    parser.add_argument("--report-only", action="store_true",
                        help="rebuild the report from the records in --out (a partial one while a run is unfinished)")
