# hybrid-router: `make demo` and `make test` do everything on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export LITELLM_LOCAL_MODEL_COST_MAP := True
# llama-cpp-python compiles from source (~7 min on 2 cores); pip caches the wheel afterwards.
export CMAKE_BUILD_PARALLEL_LEVEL := 2

.PHONY: install demo demo-retrain demo-discover ship-adapter adapter-check quant-report test test-fast bench eval-classifier eval-guard eval-discover eval-cache eval-security eval-conversations eval-learned-followups eval-followup-writers bench-load bench-capacity bench-fuzz bench-log bench-report bench-rollout bench-stream bench-release rollout-scores clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The CPU build of torch first: anything unpinned would pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[train,dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m evals.demo

# The retrain loop end to end (about an hour on 2 cores): writes evals/results/retrain.json.
demo-retrain: $(STAMP)
	$(PY) -m evals.demo_retrain

# From zero labels: all-cloud collection, router discover --auto, apply, retrain, replay (about an hour).
demo-discover: $(STAMP)
	$(PY) -m evals.demo_discover

# Copy the adapter demo-retrain promoted into evals/adapters/ with its evidence (what make demo serves).
ship-adapter: $(STAMP)
	$(PY) -m evals.ship_adapter

# Rebuild the shipped adapter from scratch and check its metrics match the manifest within +-0.02 (about an hour).
adapter-check: demo-retrain
	$(PY) -m evals.ship_adapter --check

# Merge the promoted adapter, re-quantize (Q8_0, Q5_K_M, Q4_K_M), compare answers with F16.
quant-report: $(STAMP)
	$(PY) -m evals.quant_report

test: $(STAMP)
	$(PY) -m pytest --durations=25

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

bench: $(STAMP)
	$(PY) -m evals.bench

eval-classifier: $(STAMP)
	$(PY) -m evals.classifier_eval

# The degeneration guard on base-model, reference and tuned answers: writes evals/results/guard.json.
eval-guard: $(STAMP)
	$(PY) -m evals.guard_eval

# Category discovery: Banking77 clustering vs k-means at the true k, Bitext proposals, 100k-query scale
# (about 15 minutes): writes evals/results/discover.json.
eval-discover: $(STAMP)
	$(PY) -m evals.discover_eval

# The response cache on the Bitext replay (about 10 minutes): writes evals/results/cache.json.
eval-cache: $(STAMP)
	$(PY) -m evals.cache_eval

# The trust boundary: litellm control keywords, private conversations, feedback stuffing, the PII corpus
# (about 10 minutes): writes evals/results/security.json (make demo adds private_degenerate_served).
eval-security: $(STAMP)
	$(PY) -m evals.security_eval

# Conversations: 392 Bitext conversations in each of four wording halves routed turn by turn (last message vs
# in context: the rule, and the rule beside the learned follow-up detector eval-followup-writers trains first),
# 60 holdout2 ones served through the router five ways; then 300 Banking77 conversations the rule was not tuned on
# (about 60 minutes): writes evals/results/conversations.json.
eval-conversations: $(STAMP)
	$(PY) -m evals.followup_writers
	$(PY) -m evals.conversation_eval
	$(PY) -m evals.banking_conversations

# A learned follow-up detector against the word rule, on the dev conversations only (held-out wording); about 2 minutes.
eval-learned-followups: $(STAMP)
	$(PY) -m evals.learned_followups

# A three-class follow-up detector chosen with one wording half left out, tested once on holdout2 (a writer it never saw); about 3 minutes.
eval-followup-writers: $(STAMP)
	$(PY) -m evals.followup_writers

# Many callers at once: continuous batching at 1, 4, 8 and 16 concurrent model="local" callers beside raw
# llama.cpp multi-sequence decode in three rounds, answers alone vs batched, prefix reuse (about 25 minutes):
# writes evals/results/capacity.json.
bench-capacity: $(STAMP)
	$(PY) -m evals.capacity_bench

bench-load: $(STAMP)
	$(PY) -m evals.load_bench

# What a streamed cloud answer costs the router's process beside an unstreamed one, litellm's per-chunk logging off and on (about 2 minutes).
bench-stream: $(STAMP)
	$(PY) -m evals.stream_overhead

# A routed local stream's first token held in full, released once no echo is possible, and not held, beside the stand-in cloud's, side by side on make demo's phase-2 router (about 9 minutes; run make demo first).
bench-release: $(STAMP)
	$(PY) -m evals.stream_release

# The traffic log at 100,000 and 1,000,000 synthetic rows (SQLite, PostgreSQL): router stats, retrain dataset
# build, whole and incremental; then 1,000,000 distinct prompts, where the pool cap bounds memory (about an hour).
bench-log: $(STAMP)
	$(PY) -m evals.log_scale

# `router report` over a 1,000,000-row synthetic log (the whole year): wall time and peak RSS, targets 30 s
# and 1 GB (about 10 minutes, most of it synthesising the log): writes evals/results/report.json.
bench-report: $(STAMP)
	$(PY) -m evals.report_bench

# Canary rollout on 600 replayed queries with audits (worse, better and equal canaries, 20 replays each):
# writes evals/results/rollout.json in seconds from evals/results/rollout_replay.json; `make rollout-scores`
# regenerates that table (both versions answer the 600 queries as served: about 25 minutes).
bench-rollout: $(STAMP)
	$(PY) -m evals.rollout_eval

rollout-scores: $(STAMP)
	$(PY) -m evals.rollout_scores

# The CI fuzz tests with 20x the generated cases; counts merged into evals/results/load.json.
bench-fuzz: $(STAMP)
	FUZZ_EXAMPLES=3000 FUZZ_RESULTS=evals/results/load.json LITELLM_LOCAL_MODEL_COST_MAP=True \
		$(PY) -m pytest tests/router/test_server_fuzz.py -q -s -p no:cacheprovider

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
