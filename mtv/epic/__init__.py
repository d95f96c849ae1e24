"""Epic-Kitchens-100: scoring, results files, ensembling and challenge submissions."""
