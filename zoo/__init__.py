"""The model zoo: models.json (the registry) and README.md (its generated table), as package mtv.zoo.

Data only; the code that reads it is mtv.io.registry.
"""
