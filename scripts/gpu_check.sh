#!/usr/bin/env bash
# GPU check for sslvitals, for a machine with one CUDA device and torch (FAISS, fairseq and the
# project's virtual environment may be missing: what is not importable is skipped, with the
# reason, in the summary). Runs, within a total budget (default 450 s):
#
#   1. the tests marked `gpu` (pytest -m gpu), file by file that can be collected here;
#   2. the label-free suite on CUDA: 13 layers x 180,000 frames x 768, streamed into the Gram
#      accumulators and a 40,000-frame reservoir, k-means k = 1024 (torch backend; FAISS-GPU
#      too when FAISS sees a GPU), inertia, Davies-Bouldin, Calinski-Harabasz, simplified and
#      sampled silhouette, rank measures; timed against the CPU figure in benchmarks/RESULTS.md;
#   3. a fairseq validation with vitals on a HuBERT-Base-sized random model and a 10-minute
#      probe (when fairseq is importable): the share of validation time the metrics take;
#   4. benchmarks/bench_kmeans.py on CUDA (sslvitals torch k-means vs FAISS-GPU if present).
#
# Everything goes to $OUT if set, else ./gpu_check_out: summary.md (read this first),
# env.txt, gpu_tests.log, suite.json, suite.log, fairseq.log, fairseq.json, kmeans_cuda.md.
#
# Usage (from anywhere):
#   bash scripts/gpu_check.sh
#   GPU_CHECK_ALLOW_CPU=1 bash scripts/gpu_check.sh   # no GPU: the same steps on the CPU with
#                                                       # tiny sizes, to check the script itself
# Settings: PYTHON (interpreter; default: .venv/bin/python if it imports torch, else python3),
# GPU_CHECK_BUDGET_S (total seconds, default 450).
set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
OUT_DIR="${OUT:-$ROOT/gpu_check_out}"
mkdir -p "$OUT_DIR" || exit 1
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
SUMMARY="$OUT_DIR/summary.md"
BUDGET="${GPU_CHECK_BUDGET_S:-450}"
ALLOW_CPU="${GPU_CHECK_ALLOW_CPU:-0}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
SECONDS=0

say() { echo "$*" | tee -a "$SUMMARY"; }
remaining() { echo $(( BUDGET - SECONDS )); }
# part_limit WANT: seconds a part may take (its own cap, or what is left minus a 20 s reserve)
part_limit() {
    local left=$(( BUDGET - SECONDS - 20 ))
    if (( left < $1 )); then echo "$left"; else echo "$1"; fi
}

# ------------------------------------------------------------------ interpreter and environment
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
    if [[ -x "$ROOT/.venv/bin/python" ]] && "$ROOT/.venv/bin/python" -c "import torch" 2>/dev/null; then
        PY="$ROOT/.venv/bin/python"
    else
        PY="$(command -v python3 || command -v python || true)"
    fi
fi
: > "$SUMMARY"
say "# sslvitals GPU check"
say ""
say "Started $(date -u '+%Y-%m-%d %H:%M:%S UTC') on $(hostname), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), budget ${BUDGET} s."
if [[ -z "$PY" ]] || ! "$PY" -c "import torch" 2>/dev/null; then
    say "FAILED: no Python interpreter with torch found (set PYTHON=...)."
    exit 2
fi

"$PY" - > "$OUT_DIR/env.txt" 2>&1 <<'PY'
import importlib, platform, sys
import torch
print(f"python {platform.python_version()} ({sys.executable})")
print(f"torch {torch.__version__}, CUDA build {torch.version.cuda}, cuda available {torch.cuda.is_available()}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"device 0: {p.name}, {p.total_memory / 2**30:.0f} GiB, {torch.cuda.device_count()} device(s)")
for name in ("numpy", "scipy", "sklearn", "pytest", "pytest_timeout", "faiss", "fairseq",
             "soundfile", "pandas", "transformers", "espnet2"):
    try:
        mod = importlib.import_module(name)
        extra = ""
        if name == "faiss":
            extra = f", GPUs seen by faiss: {getattr(mod, 'get_num_gpus', lambda: 0)()}"
        print(f"{name}: {getattr(mod, '__version__', 'importable')}{extra}")
    except Exception as exc:  # noqa: BLE001 - report whatever stops the import
        print(f"{name}: NOT importable ({type(exc).__name__}: {exc})")
PY
say ""
say "## Environment"
say ""
sed 's/^/    /' "$OUT_DIR/env.txt" | tee -a "$SUMMARY"
say ""

has() { "$PY" -c "import $1" >/dev/null 2>&1; }
if "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    DEVICE=cuda
    LAYERS=13; FRAMES=180000; K=1024; RESERVOIR=40000; SIL=10000
elif [[ "$ALLOW_CPU" == "1" ]]; then
    DEVICE=cpu
    LAYERS=2; FRAMES=12000; K=64; RESERVOIR=4000; SIL=1000
    say "NOTE: no CUDA device; GPU_CHECK_ALLOW_CPU=1, so every step runs on the CPU with tiny sizes"
    say "(this checks the script, not the GPU)."
    say ""
else
    say "FAILED: torch sees no CUDA device. Run on a GPU machine, or set GPU_CHECK_ALLOW_CPU=1 to"
    say "check the script on the CPU with tiny sizes."
    exit 2
fi
export GC_DEVICE="$DEVICE" GC_LAYERS="$LAYERS" GC_FRAMES="$FRAMES" GC_K="$K" \
       GC_RESERVOIR="$RESERVOIR" GC_SIL="$SIL" GC_OUT="$OUT_DIR"
STATUS=0

# ------------------------------------------------------------------ 1. tests marked gpu
say "## 1. Tests marked gpu"
say ""
if ! has pytest; then
    say "SKIPPED: pytest is not importable."
else
    PYTEST_OPTS=(-m gpu -q -rs -p no:cacheprovider)
    if ! has pytest_timeout; then
        # pytest.ini's addopts name --timeout, which needs the pytest-timeout plugin
        PYTEST_OPTS+=(-o "addopts=-ra --strict-markers")
        say "pytest-timeout is missing: running with addopts '-ra --strict-markers'."
    fi
    mapfile -t GPU_FILES < <(grep -rl --include='test_*.py' 'pytest.mark.gpu' tests | sort)
    RUNNABLE=()
    : > "$OUT_DIR/gpu_tests.log"
    for f in "${GPU_FILES[@]}"; do
        if "$PY" -m pytest "${PYTEST_OPTS[@]}" --collect-only "$f" >> "$OUT_DIR/gpu_tests.log" 2>&1; then
            RUNNABLE+=("$f")
        else
            why="$("$PY" -m pytest "${PYTEST_OPTS[@]}" --collect-only "$f" 2>&1 \
                   | grep -E 'Error|error' | grep -v '^=' | head -n 1)"
            say "- SKIPPED $f: cannot be collected here (${why:-see gpu_tests.log})"
        fi
    done
    if (( ${#RUNNABLE[@]} == 0 )); then
        say "SKIPPED: no test file with gpu tests can be collected here."
    else
        limit="$(part_limit 150)"
        timeout "$limit" "$PY" -m pytest "${PYTEST_OPTS[@]}" "${RUNNABLE[@]}" 2>&1 \
            | tee -a "$OUT_DIR/gpu_tests.log" | tail -n 25 > "$OUT_DIR/.tests_tail"
        rc=${PIPESTATUS[0]}
        say "Ran: ${RUNNABLE[*]} (exit status $rc; 5 = nothing selected)"
        say ""
        sed 's/^/    /' "$OUT_DIR/.tests_tail" | tee -a "$SUMMARY"
        rm -f "$OUT_DIR/.tests_tail"
        if (( rc != 0 && rc != 5 )); then STATUS=1; say "FAILED: gpu tests (exit status $rc)"; fi
    fi
fi
say ""

# ------------------------------------------------------------------ 2. the label-free suite
say "## 2. Label-free suite: ${LAYERS} layers x ${FRAMES} frames x 768, k = ${K}, on ${DEVICE}"
say ""
limit="$(part_limit 240)"
timeout "$limit" "$PY" - > "$OUT_DIR/suite.log" 2>&1 <<'PY'
"""The label-free suite of the validation hook, layer after layer, on the chosen device."""
import json
import os
import re
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, "benchmarks")
from bench_core import D, batches  # noqa: E402

from sslvitals.metrics.cluster import (calinski_harabasz_score, davies_bouldin_score,  # noqa: E402
                                       kmeans, silhouette_score, simplified_silhouette_score)
from sslvitals.streaming import GramAccumulator, ReservoirSampler  # noqa: E402

dev = os.environ["GC_DEVICE"]
L, N, K = int(os.environ["GC_LAYERS"]), int(os.environ["GC_FRAMES"]), int(os.environ["GC_K"])
RES, SIL = int(os.environ["GC_RESERVOIR"]), int(os.environ["GC_SIL"])
out_dir = Path(os.environ["GC_OUT"])


def sync():
    if dev == "cuda":
        torch.cuda.synchronize()


def timed(stamps, name, fn):
    sync()
    t = time.perf_counter()
    value = fn()
    sync()
    stamps[name] = stamps.get(name, 0.0) + time.perf_counter() - t
    return value


layers = []
gen_total = 0.0
t_all = time.perf_counter()
for layer in range(L):
    stamps = {}
    gram = GramAccumulator(D, device=dev)
    reservoir = ReservoirSampler(RES, D, seed=0)  # kept on the CPU, as the monitor keeps it
    gen = 0.0
    it = batches(N, K, seed=layer)
    while True:
        g0 = time.perf_counter()
        try:
            xb, _ = next(it)
        except StopIteration:
            break
        gen += time.perf_counter() - g0

        def stream(xb=xb):
            xt = torch.from_numpy(xb).to(dev)
            gram.update(xt)
            reservoir.update(xt)
        timed(stamps, "stream", stream)
    gen_total += gen
    ranks = timed(stamps, "rank", gram.compute)
    xs = timed(stamps, "reservoir_to_device", lambda: reservoir.sample()[0].to(dev))
    km = timed(stamps, "kmeans", lambda: kmeans(xs, K, niter=20, seed=0, backend="auto"))
    vals = {"inertia/N": km.inertia / xs.shape[0]}
    vals["davies_bouldin"] = timed(stamps, "db_ch_ssil", lambda: davies_bouldin_score(xs, km.labels))
    vals["calinski_harabasz"] = timed(stamps, "db_ch_ssil", lambda: calinski_harabasz_score(xs, km.labels))
    vals["simplified_silhouette"] = timed(stamps, "db_ch_ssil",
                                          lambda: simplified_silhouette_score(xs, km.labels))
    vals["silhouette(sampled)"] = timed(stamps, "silhouette",
                                        lambda: silhouette_score(xs, km.labels, sample_size=SIL, seed=0))
    vals.update({m: float(v) for m, v in ranks.items()})
    total = sum(stamps.values())
    layers.append({"layer": layer, "seconds": total, "stages": stamps, "values": vals,
                   "kmeans": f"{km.backend} on {km.device}", "generation_s_excluded": gen})
    print(f"layer {layer}: {total:.2f} s ({', '.join(f'{a} {b:.2f}' for a, b in stamps.items())}); "
          f"k-means {km.backend} on {km.device}; inertia/N {vals['inertia/N']:.4f}, "
          f"rankme {vals.get('rankme', float('nan')):.3f}", flush=True)

faiss_gpu = None
try:
    import faiss  # noqa: PLC0415
    if dev == "cuda" and faiss.get_num_gpus() > 0:
        t = time.perf_counter()
        r = kmeans(xs, K, niter=20, seed=0, backend="faiss")
        faiss_gpu = {"seconds": time.perf_counter() - t, "device": r.device,
                     "inertia/N": r.inertia / xs.shape[0]}
        print(f"FAISS k-means on the last layer's reservoir: {faiss_gpu}", flush=True)
    else:
        print("FAISS-GPU: skipped (faiss sees no GPU, or the run is on the CPU)", flush=True)
except ImportError:
    print("FAISS-GPU: skipped (faiss is not importable)", flush=True)

# the CPU figure: benchmarks/RESULTS.md, suite of one layer, 2 CPU threads, same data (seed 0)
cpu = None
text = Path("benchmarks/RESULTS.md").read_text(encoding="utf-8")
m = re.search(r"^\| sslvitals \(stream \+ reservoir 40k\) \| ([0-9.]+) \|(.*)$", text, re.M)
if m:
    row = m.group(2)
    ref_vals = {a: float(b) for a, b in re.findall(r"([a-z_()0-9/]+) = ([-0-9.e+]+)", row)}
    cpu = {"seconds_per_layer": float(m.group(1)), "values_layer0": ref_vals}
metric_s = sum(x["seconds"] for x in layers)
result = {"device": dev, "layers": L, "frames": N, "k": K, "reservoir": RES, "dim": D,
          "metric_seconds_total": metric_s, "wall_seconds": time.perf_counter() - t_all,
          "generation_seconds_excluded": gen_total, "per_layer": layers,
          "faiss_gpu_last_layer": faiss_gpu, "cpu_reference": cpu}
if cpu and dev == "cuda" and N == 180000 and K == 1024:
    result["cpu_estimate_seconds"] = cpu["seconds_per_layer"] * L
    result["speedup_vs_cpu"] = result["cpu_estimate_seconds"] / metric_s
(out_dir / "suite.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
print(f"TOTAL metric time {metric_s:.1f} s for {L} layers (data generation {gen_total:.1f} s excluded)")
if "speedup_vs_cpu" in result:
    print(f"CPU figure: {cpu['seconds_per_layer']:.2f} s per layer (benchmarks/RESULTS.md, 2 threads) "
          f"x {L} = {result['cpu_estimate_seconds']:.0f} s; speed-up {result['speedup_vs_cpu']:.1f}x")
    v0, r0 = layers[0]["values"], cpu["values_layer0"]
    for name in ("rankme", "effective_rank", "inertia/N", "davies_bouldin", "simplified_silhouette"):
        if name in v0 and name in r0:
            print(f"layer 0 {name}: {v0[name]:.6g} here vs {r0[name]:.6g} in RESULTS.md (CPU)")
else:
    print("CPU comparison: n/a (not the full-size run on CUDA)")
PY
rc=$?
sed 's/^/    /' "$OUT_DIR/suite.log" | tail -n 40 | tee -a "$SUMMARY"
if (( rc != 0 )); then STATUS=1; say "FAILED: suite (exit status $rc; 124 = ran out of its ${limit} s)"; fi
say ""

# ------------------------------------------------------------------ 3. fairseq validation
say "## 3. fairseq validation with vitals (HuBERT-Base-sized random model, 10-minute probe)"
say ""
if ! has fairseq; then
    say "SKIPPED: fairseq is not importable here."
elif ! has soundfile; then
    say "SKIPPED: soundfile is not importable here (needed to write the probe audio)."
elif (( $(remaining) < 100 )); then
    say "SKIPPED: only $(remaining) s of the budget left."
else
    limit="$(part_limit 200)"
    export GC_FAIRSEQ_LIMIT="$(( limit - 10 ))"
    timeout "$limit" "$PY" - > "$OUT_DIR/fairseq.log" 2>&1 <<'PY'
"""One validation of a HuBERT run with sslvitals on: how much of it the metrics take."""
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, "tests/integrations/fairseq")
sys.path.insert(0, "benchmarks")
import tinydata  # noqa: E402
from bench_fairseq_overhead import _parse  # noqa: E402

dev = os.environ["GC_DEVICE"]
out_dir = Path(os.environ["GC_OUT"])
work = Path(tempfile.mkdtemp(prefix="sslvitals_gpu_check_"))
t0 = time.perf_counter()
data = tinydata.make_corpus(work / "data", n_train=16, n_valid=4, seconds=(2.0, 4.0))
if dev == "cuda":
    # 60 utterances of 8-12 s: about 10 minutes of probe audio
    probe_dir = tinydata.make_corpus(work / "probe", n_train=0, n_valid=60, seconds=(8.0, 12.0), seed=5)
else:
    probe_dir = tinydata.make_corpus(work / "probe", n_train=0, n_valid=12, seconds=(1.0, 2.0), seed=5)
probe = probe_dir / "valid.tsv"
print(f"corpus and probe written in {time.perf_counter() - t0:.1f} s", flush=True)
vitals = tinydata.plugin_overrides("hubert_pretraining_vitals") + [
    "+task.vitals.enabled=true", f"+task.vitals.probe={probe}"]
if dev == "cuda":
    cfg_dir = tinydata.fairseq_root() / "examples" / "hubert" / "config" / "pretrain"
    cmd = [tinydata._train_exe(), "--config-dir", str(cfg_dir), "--config-name",
           "hubert_base_librispeech", f"task.data={data}", f"task.label_dir={data}",
           "task.labels=[km]", "model.label_rate=50", f"hydra.run.dir={work / 'run'}",
           "common.log_format=json", "common.log_interval=1", "common.seed=1",
           "distributed_training.distributed_world_size=1", "dataset.num_workers=0",
           "dataset.max_tokens=1400000", "dataset.validate_interval_updates=2",
           "optimization.max_update=2", "lr_scheduler.warmup_updates=1",
           "checkpoint.no_save=true", "task.min_sample_size=8000",
           *vitals, "+task.vitals.k=1024"]
    size = "HuBERT Base (12 layers x 768, the recipe's own sizes), random weights"
else:
    cmd = tinydata.hubert_command(data, work / "run", [
        "optimization.max_update=2", "checkpoint.no_save=true", *vitals, "+task.vitals.k=16"])
    size = "tiny HuBERT (2 layers x 64; CPU fallback)"
t1 = time.perf_counter()
proc = subprocess.run(cmd, capture_output=True, text=True, timeout=int(os.environ["GC_FAIRSEQ_LIMIT"]))
print(f"fairseq-hydra-train exit status {proc.returncode} after {time.perf_counter() - t1:.1f} s", flush=True)
if proc.returncode != 0:
    print(proc.stdout[-4000:])
    print(proc.stderr[-4000:])
    sys.exit(1)
runs = _parse(proc.stdout)
if not runs:
    print(proc.stdout[-4000:])
    sys.exit("no validation found in the fairseq log")
rows = []
for upd, r in sorted(runs.items()):
    secs = float(r["stats"].get("valid_vitals/seconds", "nan"))
    keys = [k for k in r["stats"] if k.startswith("valid_vitals/")]
    rows.append({"update": upd, "validation_wall_s": r["wall"], "vitals_seconds": secs,
                 "share": secs / r["wall"] if r["wall"] > 0 else None, "vitals_keys": len(keys)})
    print(f"update {upd}: validation {r['wall']:.2f} s, of which metrics (vitals/seconds) "
          f"{secs:.2f} s = {100 * secs / r['wall']:.0f}% ; {len(keys)} vitals keys logged")
(out_dir / "fairseq.json").write_text(json.dumps({"model": size, "probe": str(probe), "device": dev,
                                                  "validations": rows}, indent=1), encoding="utf-8")
print(f"model: {size}")
PY
    rc=$?
    sed 's/^/    /' "$OUT_DIR/fairseq.log" | tail -n 30 | tee -a "$SUMMARY"
    if (( rc != 0 )); then STATUS=1; say "FAILED: fairseq validation (exit status $rc; 124 = ran out of its ${limit} s)"; fi
fi
say ""

# ------------------------------------------------------------------ 4. k-means benchmark
say "## 4. benchmarks/bench_kmeans.py on ${DEVICE}"
say ""
if (( $(remaining) < 40 )); then
    say "SKIPPED: only $(remaining) s of the budget left."
else
    limit="$(part_limit 120)"
    if [[ "$DEVICE" == "cuda" ]]; then
        ARGS=(--device cuda --rounds 3 --threads 8)
    else
        ARGS=(--quick)
    fi
    timeout "$limit" "$PY" benchmarks/bench_kmeans.py "${ARGS[@]}" --out "$OUT_DIR/kmeans_${DEVICE}.md" \
        > "$OUT_DIR/kmeans_bench.log" 2>&1
    rc=$?
    tail -n 12 "$OUT_DIR/kmeans_bench.log" | sed 's/^/    /' | tee -a "$SUMMARY"
    rm -f "$OUT_DIR/kmeans_bench.log"
    if (( rc != 0 )); then STATUS=1; say "FAILED: k-means benchmark (exit status $rc; 124 = ran out of its ${limit} s)"; fi
fi
say ""
say "Finished after ${SECONDS} s with status ${STATUS} (0 = every step that ran passed)."
exit "$STATUS"
