"""Epic-Kitchens-100: scoring, results files, ensembling (fusion, weight search) and challenge submissions."""
