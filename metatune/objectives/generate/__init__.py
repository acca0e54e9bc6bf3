"""The generate objective: the model reads an instruction and the document and writes the JSON."""

from metatune.objectives.generate.objective import GenerateObjective

__all__ = ["GenerateObjective"]
