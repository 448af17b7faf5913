"""Test support shipped with the library: a synthetic unit corpus (`unit_corpus`, no audio,
no espeak-ng) and the SeqIO tasks over it (`tasks`: demo_units_en/_fr/_mix) that
`gin/runs/test_cpu.gin` trains. Not imported by the library itself."""
