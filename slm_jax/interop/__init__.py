"""Interoperability with other ecosystems' checkpoints.

`hf_layout`  Hugging Face Llama/Qwen2/Qwen3 config.json + tensor names <-> DecoderConfig + params
`hf_conventions` a checkpoint's BOS rule and EOS / pad / chat-template conventions (recorded in the run)
`hf_vocab`   speech-vocabulary extension: id layout, new embedding rows, tokenizer tokens
`hf_import`  `slm-jax import-hf`: local HF checkpoint -> Orbax step 0 that `slm-jax train` continues
`hf_export`  `slm-jax export-hf`: Orbax checkpoint -> config.json + safetensors (+ tokenizer)
"""
