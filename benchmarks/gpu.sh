#!/usr/bin/env bash
# The GPU check of issue 11, ready for the first CUDA machine: the benchmark at `base` and at the original study's
# size, then a short training of each through the train stage's own code, each printing tokens per second and bf16
# MFU. About 5 minutes on one modern GPU (8 at most). Results land in $OUT (default benchmarks/results/gpu-<date>).
#   usage: LLAMA_PE_MIRROR=/abs/path/to/folder-with-tinyshakespeare.txt benchmarks/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results/gpu-$(date -u +%Y%m%d)}"
mkdir -p "$OUT"
export DVC_NO_ANALYTICS=1 PYTHONPATH=src

python - <<'PY'
import torch
assert torch.cuda.is_available(), "benchmarks/gpu.sh needs a CUDA GPU"
print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, bf16: {torch.cuda.is_bf16_supported()}")
PY
# The token files: from DVC's cache if they were carried or pulled, else made from the corpus (needs the mirror).
[ -f data/encoded/meta.json ] || dvc repro encode

# The biased encodings (alibi, abs_rel, t5, fire) at dropout 0 take FlexAttention's path, whose kernels compile on
# first use (tens of seconds each): the base benchmark takes two of them, to stay within its time.
timeout 180 python -m llama_pe.cli bench --size base --device cuda --batch-size 64 --rounds 5 --steps 10 \
  --pos rope,abs,nope,alibi,fire \
  --generate-tokens 512 --profile --out "$OUT/bench-base.json" | tee "$OUT/bench-base.md" || echo "bench base: failed or timed out"
timeout 120 python -m llama_pe.cli bench --size seed33m --context 32 --batch-size 256 --device cuda --dropout 0.1 \
  --pos rope,abs,alibi,abs_rel --rounds 5 --steps 10 --generate-tokens 0 --profile \
  --out "$OUT/bench-seed33m.json" | tee "$OUT/bench-seed33m.md" || echo "bench seed33m: failed or timed out"

# Short trainings through the stage (bf16 autocast, SDPA), 300 steps each, then MFU from the metrics they wrote.
for run in "base 64 64" "seed33m 32 256"; do
  read -r size context batch <<<"$run"
  dir="$OUT/train-$size"
  mkdir -p "$dir"
  python - "$size" "$context" "$batch" "$dir/params.yaml" <<'PY'
import sys, yaml
size, context, batch, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
params = yaml.safe_load(open("params.yaml"))
params["model"]["size"] = size
params["train"].update(device="cuda", context=context, batch_size=batch, max_steps=300, eval_interval=100,
                       patience=None)
params["eval"]["stride"] = None
yaml.safe_dump(params, open(out, "w"), sort_keys=False)
PY
  timeout 75 python stages/train.py --params "$dir/params.yaml" --encoded data/encoded --tokenizer data/tokenizer \
    --best "$dir/best.pt" --last "$dir/last.pt" --metrics "$dir/train.json" --live "$dir/live" 2>&1 | tail -3 || echo "train $size: failed or timed out"
  [ -f "$dir/train.json" ] || continue
  python - "$dir" "$size" "$context" <<'PY'
import json, sys, torch
from llama_pe.bench import flops_per_token, matmul_peak
from llama_pe.checkpoint import load_checkpoint, model_from_checkpoint
directory, size, context = sys.argv[1], sys.argv[2], int(sys.argv[3])
metrics = json.load(open(f"{directory}/train.json"))
model = model_from_checkpoint(load_checkpoint(f"{directory}/best.pt"))
peak = matmul_peak(torch.device("cuda"), torch.bfloat16)
mfu = metrics["tokens_per_sec"] * flops_per_token(model, context) / peak
print(f"train {size}: {metrics['tokens_per_sec']:,.0f} tokens/s, {metrics['precision']}, "
      f"MFU {mfu:.1%} of a {peak / 1e12:.0f} TFLOP/s bf16 matmul peak, best val loss {metrics['best_val_loss']}")
PY
done
rm -f "$OUT"/train-*/*.pt  # weights are not results
