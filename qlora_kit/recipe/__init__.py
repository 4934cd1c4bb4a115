"""The recipe: YAML -> one typed `Recipe`, parsed once at the edge."""

from qlora_kit.recipe.load import dump_recipe, load_recipe
from qlora_kit.recipe.schema import Recipe

__all__ = ["Recipe", "dump_recipe", "load_recipe"]
