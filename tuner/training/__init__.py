"""Training of one model: plain loops (:mod:`.loop`), safetensors checkpoints
(:mod:`.checkpoint`), best-epoch figures (:mod:`.plots`) and the Ray Tune trainable
(:mod:`.trainable`). Import the submodules directly; nothing heavy happens here."""
