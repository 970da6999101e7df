"""Fine-tuning recipes that fix what the biascheck gate finds (ROI-IoU, AFFACT-b, rebalancing),
run as ``python -m mitigations RECIPE --model in.pt --out out.pt``; plugins add recipes through
the ``pytest_biascheck_recipes`` hook by returning :class:`mitigations.recipe.Recipe` objects."""
