"""Tokenizers room: every vocabulary of the token space.

    token_space.py  SpeechTextVocabulary: SentencePiece text + [Text]/[Speech] + units/pitch/style
                    + language tags (the SpiritLM layout); the vocabulary of every corpus task
    spm.py          SentencePiece training on corpus transcripts (`slm-jax prepare spm`)
    chars.py        CharVocabulary: mSLAM CTC characters (blank 0)
    unit_vocab.py   LEGACY UnitVocabulary (pad 0, eos 1, unk 2, unit u -> 3 + u) for unit-only
                    corpora; kept because the synthetic test corpus (`slm_jax.testing`) and
                    existing unit-only runs use its ids; new tasks use SpeechTextVocabulary.
"""
