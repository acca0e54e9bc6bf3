"""The tag objective: the model labels the tokens of the document that hold each value (BIO), and the
labelled spans are read back as the same JSON the generate objective writes."""

from metatune.objectives.tag.objective import TagObjective

__all__ = ["TagObjective"]
