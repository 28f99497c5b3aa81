"""What the dataset benchmarks share: how a model and a prompt source are named
in a run's settings and folder, and the command-line options every one of them
takes (model, prompts, output)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from captum_jscopes.models import DEFAULT_MODEL, EMBEDDED_MODELS, ModelNotAvailableError, load_model
from captum_jscopes.runs.prompts import DATASETS, DEFAULT_DATASET

__all__ = ["model_short_name", "model_id", "data_id", "results_dir", "benchmark_parser", "benchmark_main",
           "load_benchmark_model", "cli_message", "DEFAULT_RESULTS_FOLDER", "RESULTS_ROOT"]

#: the committed results of a source checkout (``benchmarks/results``); runs write there only with ``--out``
RESULTS_ROOT = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
#: the folder, under the current one, of a run's default output: never a folder of committed results
DEFAULT_RESULTS_FOLDER = "jscopes-bench"


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
    """Default output folder of a run: ``jscopes-bench/<benchmark>-<model short name>`` under the current
    folder (relative), wherever the package is installed; the committed results in the repository's
    ``benchmarks/results`` (:data:`RESULTS_ROOT`) are written only when ``--out`` names them."""
    return Path(DEFAULT_RESULTS_FOLDER) / f"{benchmark}-{model_short_name(model)}"


def cli_message(err: BaseException) -> str:
    """An error's message as a command line says it: a refused previous run
    (:class:`~captum_jscopes.runs.runner.PreviousRunError`) names ``--out`` and
    ``--overwrite`` instead of the Python keywords."""
    from captum_jscopes.runs.runner import PreviousRunError

    if isinstance(err, PreviousRunError):
        return err.describe(elsewhere="another --out", overwrite="--overwrite")
    return str(err)


def benchmark_parser(benchmark: str, prog: Optional[str], description: str, *, n_default: Optional[int] = None,
                     epilog: Optional[str] = None) -> argparse.ArgumentParser:
    """The parser of benchmark ``benchmark`` with the flags every benchmark shares:
    the model's (``--model``, ``--dtype``, ``--device``, ``--threads``), the prompts'
    (``--data``, ``--n`` with default ``n_default`` (None: all), ``--offset``) and the
    output's (``--out``, ``--overwrite``, ``--report-only``); the benchmark adds its own."""
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog)
    _add_model_arguments(parser)
    _add_prompt_arguments(parser, n_default)
    _add_output_arguments(parser, benchmark)
    return parser


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
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


def _add_prompt_arguments(parser: argparse.ArgumentParser, n_default: Optional[int] = None) -> None:
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


def _add_output_arguments(parser: argparse.ArgumentParser, benchmark: str) -> None:
    """--out, --overwrite, --report-only."""
    parser.add_argument("--out", default=None,
                        help=f"output folder (default {DEFAULT_RESULTS_FOLDER}/{benchmark}-<model> under the current "
                        "folder); a folder holding a run with other settings is refused")
    parser.add_argument("--overwrite", action="store_true", help="discard a previous run in --out instead of resuming")
    parser.add_argument("--report-only", action="store_true",
                        help="rebuild the report from the records in --out (a partial one while a run is unfinished)")


def load_benchmark_model(args: argparse.Namespace) -> tuple[Any, Any]:
    """The model and tokenizer of ``--model``, ``--dtype`` and ``--device``
    (default: CUDA when there is one), after ``--threads`` is applied."""
    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return load_model(args.model, dtype=args.dtype, device=device, progress=False)


def benchmark_main(name: str, parser: argparse.ArgumentParser, argv: Optional[Sequence[str]],
                   run: Callable[[argparse.Namespace, Path], dict], report_file: str) -> int:
    """What every benchmark's ``main`` does around its work: parse ``argv``, run
    ``run(args, out_dir)`` (``--out``, else :func:`results_dir`) and print where its
    report is; 0 when done, 2 for bad arguments or input (a one-line error naming
    the CLI flags)."""
    import sys

    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else 2
    try:
        out_dir = Path(args.out) if args.out else results_dir(name, args.model)
        summary = run(args, out_dir)
    except (ValueError, ModelNotAvailableError) as err:
        print(f"{name} benchmark: error: {cli_message(err)}", file=sys.stderr)
        return 2
    print(f"{summary['n_prompts']} prompts; report: {out_dir / report_file}")
    return 0

