#!/usr/bin/env bash
# The rules x reduction study's runs (issue 41), queued in two lanes (one per model, one torch
# thread each: the 2-core machine's two heavy jobs). Every command resumes its folder where it
# stopped, so run this again after any interruption; a finished command returns at once.
#
# Order, per lane: the Fisher default (krylov) on the first 200 prompts of each set (in the pilot its
# rules + input combination led leave-one-out agreement by a wide margin), then the cheap methods to
# 490 LAMBADA prompts (the verdict's minimum), all 500 OPUS prompts, then LAMBADA on to 1000.
#
#   bash benchmarks/rules_reduction_runs.sh            # start both lanes in the background
#   bash benchmarks/rules_reduction_runs.sh --dry-run  # print the commands only
#
# Logs: jscopes-bench/rules-reduction-logs/<lane>.log. Commit the shards as they grow:
#   git add benchmarks/results/faithfulness-*-variants*
set -u
cd "$(dirname "$0")/.."
JSCOPES=${JSCOPES:-.venv/bin/jscopes}
R=benchmarks/results
CHEAP=semantic,semantic+lrp,semantic+input,semantic+lrp+input,temperature,temperature+lrp,temperature+input,\
temperature+lrp+input,fisher_eig1,fisher_eig1+lrp,fisher_eig1+input,fisher_eig1+lrp+input,grad_x_input,attnlrp,random
KRYLOV=fisher_krylov,fisher_krylov+lrp,fisher_krylov+input,fisher_krylov+lrp+input
COMMON="--loo-n 200 --extra-ablations token,mask --curve-fractions 0.05,0.1,0.2 --threads 1"

lane() {  # lane MODEL_FLAGS FOLDER_PREFIX
    local model=$1 prefix=$2
    echo "$JSCOPES bench faithfulness $model --n 200 --methods $KRYLOV $COMMON --out $R/$prefix-lambada1000-variants-krylov"
    echo "$JSCOPES bench faithfulness $model --data opus_de_en --n 200 --methods $KRYLOV $COMMON --out $R/$prefix-opus500-variants-krylov"
    echo "$JSCOPES bench faithfulness $model --n 490 --methods $CHEAP $COMMON --out $R/$prefix-lambada1000-variants"
    echo "$JSCOPES bench faithfulness $model --data opus_de_en --n 500 --methods $CHEAP $COMMON --out $R/$prefix-opus500-variants"
    echo "$JSCOPES bench faithfulness $model --n 1000 --methods $CHEAP $COMMON --out $R/$prefix-lambada1000-variants"
}

LANES=("smollm2|" "gemma3|--model gemma3-270m")
PREFIXES=("faithfulness-smollm2-135m-instruct" "faithfulness-gemma3-270m")
if [ "${1:-}" = "--dry-run" ]; then
    for i in 0 1; do lane "${LANES[$i]#*|}" "${PREFIXES[$i]}"; done
    exit 0
fi
LOGS=jscopes-bench/rules-reduction-logs
mkdir -p "$LOGS"
for i in 0 1; do
    name=${LANES[$i]%%|*}
    lane "${LANES[$i]#*|}" "${PREFIXES[$i]}" > "$LOGS/$name.commands"
    # one command after the other; a failing one stops its lane (its log says why)
    nohup bash -c "set -e; while read -r command; do echo \"\$(date -u) \$command\"; \$command < /dev/null; done < '$LOGS/$name.commands'" \
        > "$LOGS/$name.log" 2>&1 &
    echo "lane $name: pid $! (log $LOGS/$name.log)"
done
