"""Research tooling on top of the training package, not needed to train or serve a model: the
one-factor ablation (`python -m training.research.ablation`) and the model card's figures
(`python -m training.research.model_card`)."""
