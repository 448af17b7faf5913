"""The corpus room: the `Utterance` schema and validator (`schema`), its files (`io`),
cross-lingual pairs (`paired`) and importers of other tools' unit dumps (`importers`: slamkit,
textlesslib, SpiritLM). Text enters normalised (`slm_jax.text_normalization.normalize_text`):
the importers and both writers (`to_example`, `write_jsonl`) apply it; word times from real
aligners are made valid by `repair_words` (zero-length words kept, out-of-audio ones clipped).

`from slm_jax.data import corpus` keeps working: the public names of `schema`, `io` and
`paired` are re-exported here.
"""

from slm_jax.data.corpus.io import (from_example, iter_jsonl_objects, iter_tfrecord_bytes, iter_utterances,
                                    list_files, paired_from_example, paired_to_example, read_jsonl,
                                    read_tfrecord, serialize, shard_path, to_example, write_jsonl,
                                    write_serialized_shards, write_tfrecord_shards)
from slm_jax.data.corpus.paired import pair_parallel, read_paired_tfrecord, write_paired_tfrecord_shards
from slm_jax.data.corpus.schema import (JSONL_SUFFIXES, MAX_REASONS_LOGGED, ON_BAD_RECORD_CHOICES,
                                        PAIRED_TFRECORD_FEATURES, SHARD_SUFFIX, TFRECORD_FEATURES,
                                        WORD_REPAIR_LIMIT_S, BadRecordError, OnBadRecord, Utterance,
                                        check_on_bad_record, log_skipped, normalize_utterance, repair_words,
                                        validate, validate_all)
