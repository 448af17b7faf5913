"""Experiments that reproduce a paper's comparison with slm_jax: consumers of the library, like
`slm_jax_demo`. `crosslingual` registers the tasks and mixtures of the cross-lingual interleaving
comparison (Moumen, Sun, Woodland, arXiv 2512.01865; SEEDS.md section 1), run by the gin files in
`gin/experiments/crosslingual/`."""
