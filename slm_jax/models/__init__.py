"""Flax models behind one interface (`interface.py`: registry by config type, `ModelFamily`,
`ModelOutput`): the dense `decoder.Decoder`, latent speech patching `lst.LSTModel`, the mSLAM
CTC head (`ctc.py`), sampling. Models never import data/, training/ or evaluation/."""
