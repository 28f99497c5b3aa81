"""One process of a multi-process run_sharded test, started by tests/bench/test_runner.py through accelerate launch.

Each record says which run (--tag) and which process computed it, so the test can tell fresh work from
resumed work. Exits non-zero when run_sharded raises (e.g. a settings mismatch).
"""

import argparse
import json

from accelerate import PartialState

from captum_jscopes.runs.prompts import load_prompts
from captum_jscopes.runs.runner import run_sharded


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", required=True, help="JSON or JSONL prompts file")
    parser.add_argument("--out", required=True, help="run_sharded out_dir")
    parser.add_argument("--tag", required=True, help="stored in every record computed by this run")
    parser.add_argument("--meta", default="{}", help="run settings, as JSON")
    args = parser.parse_args()

    def fn(prompt):
        state = PartialState()  # the singleton run_sharded set up
        return {"tag": args.tag, "rank": state.process_index, "num": state.num_processes, "chars": len(prompt.text)}

    path = run_sharded(load_prompts(args.prompts), fn, args.out, meta=json.loads(args.meta))
    print(f"merged into {path}", flush=True)


if __name__ == "__main__":
    main()
