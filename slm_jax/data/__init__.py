"""Corpora and SeqIO tasks (TensorFlow). Rooms, in import order (a room imports only the ones
before it): corpus/ -> tokenizers/ -> preprocessors/ -> packing -> feature_converter ->
registration -> pipeline / inspect_data. See WORKSPACE.md."""
