"""Demo SeqIO tasks over the synthetic unit corpus (generated on first use).

Registered names:
  demo_units_en, demo_units_fr  -- one language each, units deduplicated;
  demo_units_mix                -- en + fr at equal rates.

Importing this module does no I/O: the corpus is generated (into
`$SLM_JAX_DATA_DIR/demo_units_v1`, default `~/.cache/slm_jax/data`) the first time
a dataset is built. Use it with `--module_import=slm_jax.testing.tasks`.
"""

from slm_jax.testing import unit_corpus as demo_corpus
from slm_jax.data.registration import register_mixture, register_unit_task

DEMO_TASKS = {lang: f"demo_units_{lang}" for lang in demo_corpus.LANGS}
DEMO_MIXTURE = "demo_units_mix"

for _lang, _name in DEMO_TASKS.items():
    register_unit_task(
        _name,
        {split: demo_corpus.file_pattern(split, _lang) for split in demo_corpus.SPLITS},
        num_units=demo_corpus.NUM_UNITS,
        dedup=True,
        root_fn=demo_corpus.ensure_demo_corpus,
    )

register_mixture(DEMO_MIXTURE, list(DEMO_TASKS.values()), default_rate=1.0)
