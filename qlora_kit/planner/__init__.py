"""The "will it fit" planner: peak training memory predicted from a model's config and the recipe (no weights)."""
