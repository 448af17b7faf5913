"""Preprocessors room: small pure-TF SeqIO preprocessors, batch-first, seeded where random.

    common.py           dedup, units -> targets, split to length with aligned features, `vectorized`;
                        `word_frames` (THE time range -> frames rule); `declare_fields` (record fields
                        a preprocessor needs, checked by `registration.register_corpus_task`)
    interleave.py       speech-only, text-only, cross-lingual, expressive merge
    word_interleave.py  word-level speech-text interleaving (slamkit span policies)
    task_formats.py     ASR / TTS / S2TT / continuation sequences with loss masks; few-shot prompts
    ctc_targets.py      transcripts -> mSLAM CTC character ids
    patch_ids.py        LST latent patch ids (static k / word-aligned)
"""
