"""Task recipes: one module per task (its data, model, fit, predictor, metrics and views), and the run that every
task shares (`tunelab.recipes.runs`)."""
