"""Faithfulness benchmark of the Jacobian Scopes paper (AOPC, leave-one-out agreement).

    python benchmarks/faithfulness.py --n 100 --loo-n 20
    CUDA_VISIBLE_DEVICES="" accelerate launch --multi_gpu --num_processes 2 benchmarks/faithfulness.py --n 1000

Options: python benchmarks/faithfulness.py --help; details in captum_jscopes/bench/faithfulness.py.
"""

from captum_jscopes.bench.faithfulness import main

raise SystemExit(main())
