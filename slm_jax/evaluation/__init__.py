"""Evaluation of trained SLMs (SEEDS.md: how SLM benchmarks are scored).

    sequences.py    evaluation inputs as token ids, exactly as the training tasks write them
    runner.py       ModelRunner: model + params (+ the Trainer's mesh, rules and shardings)
    likelihood.py   batched, bucketed, sharded per-sequence log-likelihoods
    cloze.py        pair benchmarks: JSONL pairs, scores, the audio -> units encoder and its keyed cache
    benchmark_layouts.py  published benchmark folders (sSC/tSC, cross-modal StoryCloze, ZeroSpeech
                    sWUGGY / sBLIMP, SALMon): detection, pairing and official aggregation, no audio read
    alignment.py    cross-lingual hidden-state alignment of parallel utterances
    generate.py     KV-cache generation, modality forcing, few-shot ASR / TTS
    metrics_text.py WER / CER / unit error rate (jiwer)
    benchmarks.py   benchmark names, BenchmarkSuite, run_benchmarks (in-training eval), tables
    results.py      MODEL_DIR/eval/<step>.json records (intervals, tokens seen) and the accuracy plot
    stats.py        pair wins, percentile-bootstrap intervals, paired bootstrap + McNemar exact (numpy/scipy only)
    compare.py      `slm-jax compare`: several runs' records side by side, budget check, JSON + plot (no JAX)
"""
