"""Where model cards of saved runs tell users to look: `from metatune.inference import open_run`.

The extractors live with their objectives (metatune.objectives); this module keeps the names
older code and cards import.
"""

from metatune.objectives import open_run
from metatune.objectives.generate.extractor import Extractor

__all__ = ["Extractor", "open_run"]
