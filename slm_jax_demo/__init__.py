"""The spoken demo: a consumer of slm_jax, not part of it.

    stories.py     seeded parallel EN/FR story grammar with StoryCloze / TopicCloze endings
    tts.py         espeak-ng word-by-word synthesis with exact word/sentence times
    corpus.py      `slm-jax prepare demo-corpus`: stories -> speech -> units -> corpus + cloze pairs
    tasks.py       its SeqIO tasks and mixtures (`--module_import=slm_jax_demo.tasks`)
    benchmarks.py  its benchmark names (sSC/sTC EN/FR/EN->FR/FR->EN, EN/FR alignment) and table
"""
